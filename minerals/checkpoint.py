"""Checkpoints of minerals/train.py: what ``best.pt`` / ``last.pt`` hold, and how ``--resume`` reads them.

A checkpoint is a dict: ``model`` (the weights to use), ``optimizer``, ``scheduler``, ``epoch``, ``best_metric``,
``config`` (train.py's Config as a dict), ``classes``, ``minerals``, ``threshold`` (chosen on validation),
``temperature`` (the confidence calibration fitted on validation: minerals/decision.py), ``img_size``,
``backbone``, ``width``, ``history`` (per-epoch log) and ``rng_state`` (for an exact resume).
predict.py reads ``model``, ``classes``, ``backbone``, ``width``, ``img_size``, ``threshold``, ``temperature``
(1.0 in a checkpoint of an earlier version) and ``config``.

Every file is read with ``torch.load(weights_only=True)`` (:func:`read_checkpoint`): a file that would run code
when loaded is refused, and any unusable file is one line naming it and the reason.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
import shutil
import sys
import warnings
from pathlib import Path

from common.config import resumed_config
from common.io import atomic_path, remove_leftovers, write_json
from minerals.config import CLASSES, CV_CALIBRATION, MINERALS

RUN_FILES = ("best.pt", "last.pt", "config.json", "split.csv", "log.csv", "curves.png", "model.onnx",
             "model_summary.txt", "val_predictions.csv", "result.json")  # what train.py writes into --out
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


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The dict saved in ``path`` by ``torch.save``, loaded without running any code from it. Raises ``ValueError``
    with ``"<path>: <reason>"`` for a missing, empty, folder, corrupt, foreign or code-carrying file (never torch's
    advice to load it with ``weights_only=False``)."""
    path = Path(path)
    if not path.exists():
        reason = "checkpoint not found" + (" (a symbolic link to nothing)" if path.is_symlink() else "")
    elif path.is_dir():
        reason = "is a folder, not a checkpoint file"
    elif path.stat().st_size == 0:
        reason = "file is empty (0 bytes)"
    else:
        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on pickle protocols of foreign files
                ck = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            code = re.search(r"GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", str(err))
            reason = (f"refused: loading it would run Python code ({code.group(1) or code.group(2)}); a checkpoint of "
                      "train.py holds weights and plain values only" if code
                      else "not a PyTorch checkpoint (unreadable pickle data)")
        except (OSError, RuntimeError, EOFError, ValueError, KeyError, AttributeError) as err:
            first = str(err).split(". ")[0].splitlines()[0] if str(err) else type(err).__name__
            reason = f"corrupt, truncated or not a PyTorch checkpoint ({first})"
        else:
            if isinstance(ck, dict):
                return ck
            reason = f"holds a {type(ck).__name__}, not the dict of a checkpoint"
    raise ValueError(f"{path}: {reason}")


def save_checkpoint(path: Path, model, opt, sched, best: float, cfg, row: dict, history: list[dict]) -> None:
    """The checkpoint of the epoch logged in ``row`` (its epoch, threshold and temperature), written atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": row["epoch"], "best_metric": best, "config": dataclasses.asdict(cfg), "classes": CLASSES,
                    "minerals": MINERALS, "threshold": row["threshold"], "temperature": row["temperature"],
                    "img_size": cfg.img_size,
                    "backbone": cfg.backbone, "width": cfg.width, "history": history,
                    "rng_state": torch.get_rng_state()}, tmp)  # augmentation / dropout draws, for --resume


def load_resume(cfg, device, log):
    """(the run's config, its checkpoint) for ``--resume`` (``(cfg, None)`` without it): the checkpoint's settings
    define the run (model, split, schedule, epochs planned); a different value on the command line is reported and
    not used."""
    if not cfg.resume:
        return cfg, None
    try:
        ck = read_checkpoint(cfg.resume, device)
    except ValueError as err:
        raise SystemExit(f"error: --resume {err}") from None
    if not isinstance(ck.get("config"), dict) or not {"model", "optimizer", "scheduler", "epoch"} <= set(ck):
        raise SystemExit(f"error: --resume {cfg.resume}: not a last.pt of minerals/train.py (no training state)")
    saved = ck["config"]
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


def held_out_calibration(cfg) -> dict:
    """``--val-fold -1``: the temperature and threshold fitted on held-out predictions of cross-validation runs of
    this recipe: ``--calibration``'s calibration.json, else the backbone's ``CV_CALIBRATION``. A file of another
    backbone or input size, or one without a usable temperature and threshold, stops the run before training."""
    if not cfg.calibration:
        if cfg.backbone not in CV_CALIBRATION:
            raise SystemExit(f"error: --val-fold -1: no cross-validated calibration of {cfg.backbone} is stored "
                             "(CV_CALIBRATION in minerals/config.py); give --calibration: the calibration.json "
                             "of a validation-fold run of this recipe (train.py --val-fold 0 ...) or of bench.py "
                             "--folds 5")
        return dict(CV_CALIBRATION[cfg.backbone])
    try:
        cal = json.loads(Path(cfg.calibration).read_text())
        t, thr = float(cal["temperature"]), float(cal["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"error: --calibration {cfg.calibration}: not a calibration.json of train.py or bench.py "
                         f"({type(err).__name__}: {err})") from None
    if not (math.isfinite(t) and t > 0 and 0 <= thr <= 1):
        raise SystemExit(f"error: --calibration {cfg.calibration}: temperature {t} and threshold {thr} must be > 0 "
                         "and in [0, 1]")
    fitted = {k: cal.get(k) for k in ("backbone", "img_size")}
    if fitted != {"backbone": cfg.backbone, "img_size": cfg.img_size}:
        raise SystemExit(f"error: --calibration {cfg.calibration} was fitted for {fitted}, this run trains "
                         f"{cfg.backbone} at {cfg.img_size} px")
    if cal.get("epochs") not in (None, cfg.epochs):
        print(f"warning: --calibration {cfg.calibration} was fitted on runs of {cal['epochs']} epochs, this run "
              f"trains {cfg.epochs}", file=sys.stderr)
    return {"temperature": t, "threshold": thr, "source": f"{cfg.calibration} ({cal.get('source', '')})"}


def prepare_run_folder(out: Path, config: dict, resumed_from: str = "") -> None:
    """The run folder with its ``config.json``, without the temporary files of a killed run; a run resumed into
    another folder takes its best.pt along."""
    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out, RUN_FILES)  # what a killed run left half-written (atomic writes: never the real names)
    write_json(out / "config.json", config)
    best_so_far = Path(resumed_from).with_name("best.pt") if resumed_from else None
    if best_so_far is not None and best_so_far.exists() and not (out / "best.pt").exists():
        with atomic_path(out / "best.pt") as tmp:
            shutil.copyfile(best_so_far, tmp)
