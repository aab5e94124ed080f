"""Checkpoints of minerals/train.py: what ``best.pt`` / ``last.pt`` hold, and how ``--resume`` reads them.

A checkpoint is a dict: ``model`` (the weights to use), ``optimizer``, ``scheduler``, ``epoch``, ``best_metric``,
``config`` (train.py's Config as a dict), ``classes``, ``minerals``, ``threshold`` (chosen on validation),
``img_size``, ``backbone``, ``width``, ``history`` (per-epoch log) and ``rng_state`` (for an exact resume).
predict.py reads ``model``, ``classes``, ``backbone``, ``width``, ``img_size``, ``threshold`` and ``config``.
"""
from __future__ import annotations

import dataclasses
import pickle
import shutil
from pathlib import Path

import torch

from common.config import resumed_config
from common.io import atomic_path, write_json
from minerals.data import CLASSES, MINERALS

# what --resume may change: where and how the run executes, not what it trains
RESUME_MAY_CHANGE = ("data", "out", "resume", "device", "threads", "max_steps", "export", "time_budget_min")

# options of earlier versions, with the value that did nothing: a run saved with any other value trained
# something this version cannot continue (their measurements: minerals/EXPERIMENTS.md)
REMOVED_OPTIONS = {"quarter_turns": False, "augment": "basic", "ema_decay": 0.0, "head_epochs": 0, "tta": False,
                   "train_share": 1.0}


def removed_options_in_use(saved_config: dict) -> list[str]:
    """``--name value`` of every removed option that ``saved_config`` (a checkpoint's or config.json's) sets."""
    return [f"--{k.replace('_', '-')} {saved_config[k]}" for k, off in REMOVED_OPTIONS.items()
            if k in saved_config and saved_config[k] != off]


def save_checkpoint(path: Path, model, opt, sched, epoch: int, best: float, cfg, threshold: float,
                    history: list[dict]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch, "best_metric": best, "config": dataclasses.asdict(cfg), "classes": CLASSES,
                    "minerals": MINERALS, "threshold": threshold, "img_size": cfg.img_size,
                    "backbone": cfg.backbone, "width": cfg.width, "history": history,
                    "rng_state": torch.get_rng_state()}, tmp)  # augmentation / dropout draws, for --resume


def load_resume(cfg, device, log):
    """(the run's config, its checkpoint) for ``--resume`` (``(cfg, None)`` without it): the checkpoint's settings
    define the run (model, split, schedule, epochs planned); a different value on the command line is reported and
    not used."""
    if not cfg.resume:
        return cfg, None
    try:
        ck = torch.load(cfg.resume, map_location=device, weights_only=True)
        saved = ck["config"]
    except (OSError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as err:
        raise SystemExit(f"error: --resume {cfg.resume}: not a last.pt of minerals/train.py ({err})") from None
    if removed := removed_options_in_use(saved):
        raise SystemExit(f"error: --resume {cfg.resume}: the run was started with {', '.join(removed)}, which this "
                         "version no longer has (minerals/EXPERIMENTS.md); start a new run")
    run, overridden = resumed_config(cfg, saved, RESUME_MAY_CHANGE)
    if ck.get("epoch", 0) >= run.epochs:  # it would train nothing and record a train time of 0 s as the run's
        raise SystemExit(f"error: --resume {cfg.resume}: the run has done all the {run.epochs} epochs it planned; "
                         "nothing is left to train (start a new run to train longer)")
    if overridden:
        log("--resume continues the run with its own settings: "
            + ", ".join(f"{name}={kept!r} (command line: {given!r})" for name, kept, given in overridden))
    return run, ck


def prepare_run_folder(out: Path, config: dict, resumed_from: str = "") -> None:
    """The run folder with its ``config.json``; a run resumed into another folder takes its best.pt along."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    best_so_far = Path(resumed_from).with_name("best.pt") if resumed_from else None
    if best_so_far is not None and best_so_far.exists() and not (out / "best.pt").exists():
        with atomic_path(out / "best.pt") as tmp:
            shutil.copyfile(best_so_far, tmp)
