"""The checkpoints of a training run: what train.py saves each epoch, and how --resume reads them back (the
run's options, its random-number states, the weights, optimiser and schedule)."""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import torch

from common.io import atomic_path
from fcnn_rgb_gt.config import THRESHOLD, CheckpointError
from fcnn_rgb_gt.data import CropSampler
from fcnn_rgb_gt.ddp import gather, rank0_decides
from fcnn_rgb_gt.infer import read_checkpoint
from fcnn_rgb_gt.model import drop_legacy

# options of older versions and the value the code now has built in: a stored run at that value resumes
LEGACY_OPTIONS = {"loss": "wce", "dropout": 0.0, "upsample": "nearest", "threshold": 0.5,
                  "exceed_memory_limit": False}


def read_resume(out: Path, main_rank: bool, world: int) -> dict:
    """``<out>/last.pt`` for --resume, its config in this version's options: read by rank 0 and sent to the
    others (no shared file system needed), or its error raised on every rank."""
    path, got = Path(out) / "last.pt", None
    if main_rank:
        try:
            if not path.is_file():
                raise CheckpointError(f"{path}: nothing to resume (no last.pt in --out)")
            got = read_checkpoint(path, keys=("model", "optimizer", "scheduler", "epoch", "history", "config"))
            got["config"] = stored_options(path, got["config"])
        except CheckpointError as err:
            got = err
    got = rank0_decides(got, world)
    if isinstance(got, CheckpointError):
        raise got
    return got


def stored_options(path: Path, stored: dict) -> dict:
    """A checkpoint's config in this version's options: older options at the value now built in are dropped,
    ``normalize`` / ``batch_norm`` become ``plain``, no ``scales`` is one scale; another value is a
    CheckpointError naming it."""
    stored = dict(stored)
    other = drop_legacy(stored, LEGACY_OPTIONS)
    if other:
        raise CheckpointError(f"{path}: its option {other}; start a new run")
    extras = {stored.pop("normalize", None), stored.pop("batch_norm", None)} - {None}
    if len(extras) > 1:
        raise CheckpointError(f"{path}: trained with only one of input standardisation and batch norm, which this "
                              "version no longer offers (the default has both, --plain neither); start a new run")
    if extras:
        stored["plain"] = not extras.pop()
    stored.setdefault("scales", "1")  # runs of versions without the pyramid: one scale
    return stored


def rng_states(sampler: CropSampler, device: torch.device, world: int) -> list[dict]:
    """Every rank's random-number states (its crop generator, torch's CPU and CUDA generators), for rank 0's
    checkpoint: a resumed run draws the same crops as an uninterrupted one."""
    mine = {"crops": sampler.g.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    return gather(mine, world)


def restore_rng(states: list[dict] | None, sampler: CropSampler, device: torch.device, rank: int, world: int
                ) -> str:
    """Put this rank's states of a checkpoint back; return a warning when they cannot be (else "")."""
    if not states or len(states) != world:
        held = f"of {len(states)} process(es), this run has {world}" if states else "none (an older train.py)"
        return (f"the checkpoint holds random-number states {held}: the crop streams start afresh (the run "
                "continues, but not as an uninterrupted one would)")
    mine = states[rank]
    sampler.g.set_state(mine["crops"])
    torch.set_rng_state(mine["torch"])
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], device)
    return ""


def save_checkpoint(path: Path, run: dict, epoch: int, cfg, history: list, extra: dict,
                    model_state: dict | None = None) -> None:
    """The run's state after ``epoch`` (``cfg``: its config dataclass); ``extra``: the random-number states, the
    data fingerprint and the training image's statistics. ``model`` is ``model_state`` (default: the trained
    weights), what predict.py uses with ``threshold``; the weight average travels in ``averages`` for --resume."""
    state = {"model": model_state or run["model"].state_dict(), "optimizer": run["opt"].state_dict(),
             "scheduler": run["sched"].state_dict(), "epoch": epoch, "averages": {"ema": run["ema"].state_dict()},
             "threshold": THRESHOLD, "config": asdict(cfg),
             "model_config": run["model"].cfg.to_dict(), "history": history, "classes": ["background", "building"],
             **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def restore(run: dict, ckpt: dict, out: Path, device: torch.device, rank: int, world: int, log) -> tuple:
    """Load a --resume checkpoint into the run; return ``(history, first epoch)``."""
    try:
        run["model"].load_state_dict(ckpt["model"])
        run["opt"].load_state_dict(ckpt["optimizer"])
        run["sched"].load_state_dict(ckpt["scheduler"])
        if "ema" in ckpt.get("averages", {}):  # an older run's average starts afresh
            run["ema"].load_state_dict(ckpt["averages"]["ema"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"{out / 'last.pt'}: does not fit this run ({str(err).splitlines()[0]})") from None
    warning = restore_rng(ckpt.get("rng"), run["sampler"], device, rank, world)
    if warning and rank == 0:
        print(f"warning: {out / 'last.pt'}: {warning}", file=sys.stderr)
    log(f"resumed {out / 'last.pt'} at epoch {ckpt['epoch']}")
    return ckpt["history"], ckpt["epoch"] + 1
