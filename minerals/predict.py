"""Classify image patches into the 7 minerals or "unknown"; JSON results to stdout (or --out), logs to stderr.

    python minerals/predict.py [PATCH_OR_FOLDER ...] [--checkpoint runs/minerals/train/best.pt] \
        [--threshold 0.5] [--out results.json]

Output: ``{"<filename>": {"confidence": float, "result": "<mineral>" | "unknown"}}``. ``confidence`` is the
calibrated probability that the most likely mineral is right (temperature fitted on held-out patches: the
validation fold, or for a model trained on every photo the cross-validation runs of its recipe; stored in the
checkpoint); below the threshold (by default the one chosen on those patches and stored in the checkpoint) the
result is ``"unknown"`` (see minerals/decision.py). The JSON is written once complete: ``--out`` replaces the
file atomically (an earlier file stays whole until then), while a shell redirect ``> results.json`` empties the
file before the program starts. Without ``--checkpoint`` the run of ``make train-minerals`` is used, else the
one of ``make demo-minerals``; without inputs, the patches that checkpoint was trained on. Keys are file names, or
paths relative to the given folder (the full path as given when two inputs share one; a file given twice is
classified once). A file that cannot be read is named with the reason on stderr and keeps the format in the
JSON as ``{"confidence": 0.0, "result": "unknown"}`` (nothing recognised); the batch goes on, and the exit
status is 1 when any file failed (2 when none could be read or none was found, or the checkpoint is unusable).

Keys come out sorted, so N workers can split a large folder and one merge rebuilds the single-worker file
byte for byte (``--shard I/N`` takes every N-th file of the sorted list; under ``torchrun`` the default is
RANK/WORLD_SIZE)::

    python minerals/predict.py patches/ --shard 0/2 > results.shard-0-of-2.json     # on machine/worker 0
    python minerals/predict.py patches/ --shard 1/2 > results.shard-1-of-2.json     # on machine/worker 1
    python -m common.shard merge results.json                                       # == the unsharded JSON
    python minerals/predict.py patches/ --shard 0/2 --out results.json              # writes results.shard-0-of-2.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.config import HelpFormatter
from common.io import IMAGE_EXTENSIONS, atomic_write, dumps_json, remove_leftovers
from common.shard import add_shard_argument, launcher_env, select_shard, shard_path
from minerals.config import CLASSES, DEVICES, default_checkpoint
from minerals.decision import UNKNOWN, decide, threshold_problem

if TYPE_CHECKING:  # PyTorch is imported by the functions that use it, after the options are parsed
    import torch

CHECKPOINT_KEYS = ("model", "classes", "backbone", "img_size", "threshold", "config")  # what inference reads
MIN_SIDE = 16  # px: a smaller image holds too little of a mineral to classify (a 1x1 file is one colour)


class CheckpointError(ValueError):
    """A checkpoint predict.py cannot use; ``str()`` is one line naming the file and the reason."""


def frozen_for_cpu(model: torch.nn.Module, img_size: int) -> torch.nn.Module:
    """The eval-mode network traced and frozen by TorchScript for CPU inference
    (https://pytorch.org/docs/stable/generated/torch.jit.freeze.html: weights inlined as constants, BatchNorm
    folded into the convolutions). Same outputs to about 1e-6, any batch size, faster on CPU than eager PyTorch
    (the measurements: minerals/EXPERIMENTS.md)."""
    import warnings

    import torch

    x = torch.rand(2, 3, img_size, img_size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's maintenance-mode notices
        return torch.jit.freeze(torch.jit.trace(model.eval(), x))


def load_classifier(path: str | Path, device: torch.device, jit: bool = True) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, checkpoint metadata: threshold, temperature, img_size, classes, backbone, config).

    ``jit``: on CPU, the network frozen by ``frozen_for_cpu``. A file that is no usable checkpoint of train.py
    raises :class:`CheckpointError` naming it and the reason."""
    import torch

    from minerals.checkpoint import read_checkpoint
    from minerals.model import build_model

    path = Path(path)
    try:
        ck = read_checkpoint(path)
    except ValueError as err:
        hint = " (train first: make train-minerals, or make demo-minerals)" if not path.exists() else ""
        raise CheckpointError(f"{err}{hint}") from None
    missing = [k for k in CHECKPOINT_KEYS if k not in ck]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of minerals/train.py (no {', '.join(missing)})")
    if not isinstance(ck["config"], dict):
        raise CheckpointError(f"{path}: not a checkpoint of minerals/train.py (its config is not a dict)")
    if ck["classes"] != CLASSES:
        raise CheckpointError(f"{path}: trained for classes {ck['classes']}, this code expects {CLASSES}")
    try:
        model = build_model(ck["backbone"], len(CLASSES), ck.get("width", 1.0), pretrained=False)
        model.load_state_dict(ck["model"])
    except (ValueError, RuntimeError, TypeError, AttributeError) as err:  # unknown backbone, weights of other shape
        raise CheckpointError(f"{path}: its weights do not fit {ck['backbone']!r} "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    model = model.to(device, memory_format=torch.channels_last).eval()
    meta = {k: v for k, v in ck.items() if k not in ("model", "optimizer", "scheduler", "train_model", "ema")}
    meta.setdefault("temperature", 1.0)  # a checkpoint of a version without calibration
    if ck["config"].get("tta"):  # an earlier version's mirror averaging
        print(f"note: {path} was validated with mirror averaging (--tta), which this version no longer does; its "
              "threshold was chosen on those averaged probabilities", file=sys.stderr)
    return (frozen_for_cpu(model, ck["img_size"]) if jit and device.type == "cpu" else model), meta


def collect_files(inputs: list[str]) -> list[tuple[str, Path]]:
    """(JSON key, path) for every file given or found (recursively) in a given folder."""
    found: list[tuple[str, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            every = sorted(f for f in p.rglob("*") if f.is_file() or f.suffix.lower() in IMAGE_EXTENSIONS)
            # (a folder or a symbolic link to nothing named like an image is kept: it is reported as unreadable)
            files = [f for f in every if f.suffix.lower() in IMAGE_EXTENSIONS]
            if len(files) < len(every):  # said, not silently missing from the JSON
                other = [f for f in every if f.suffix.lower() not in IMAGE_EXTENSIONS]
                print(f"{p}: skipped {len(other)} files without an image extension ({', '.join(IMAGE_EXTENSIONS)}), "
                      f"e.g. {other[0].relative_to(p).as_posix()} (give a file by name to classify it anyway)",
                      file=sys.stderr)
            if not files:
                print(f"warning: {p}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder", file=sys.stderr)
            found += [(f.relative_to(p).as_posix(), f) for f in files]
        else:  # files are passed on even when missing: they are then reported as errors
            found.append((p.name, p))
    # (a temporary file an interrupted run of a tool left: hidden, ".name.XXXX.tmp.jpg", never an input)
    found = [(k, f) for k, f in found if not (f.name.startswith(".") and ".tmp." in f.name)]
    seen: set[Path] = set()  # a file given twice (itself and inside a given folder) is classified once
    found = [(k, f) for k, f in found if not (f.resolve() in seen or seen.add(f.resolve()))]
    names = [k for k, _ in found]
    if len(set(names)) < len(names):  # same name twice: fall back to the full path as given
        found = [(str(f), f) for _, f in found]
    return found


def json_entry(probs: np.ndarray, threshold: float) -> dict:
    """The brief's JSON value of one patch: the confidence as written (6 decimals) and the result decided on that
    written value, so the file never shows a confidence at or above the threshold with "unknown"."""
    conf, res = decide(probs[None], threshold, decimals=6)
    return {"confidence": float(conf[0]), "result": res[0]}


def read_patch(path: Path) -> np.ndarray:
    """The RGB pixels of one patch file; ``ImageReadError`` for an unreadable one or one under ``MIN_SIDE`` px."""
    from common.io import read_rgb

    return read_rgb(path, min_side=MIN_SIDE, purpose="classify")


def predict_probs(model, files: list[Path], img_size: int, device: torch.device, batch_size: int = 32,
                  temperature: float = 1.0, progress: bool = False):
    """Yield ``(index, probs (8,) | None, error | None)`` for ``files``, in batches; bad files never stop it.
    ``temperature``: the checkpoint's calibration (logits divided by it); ``progress``: a bar on stderr."""
    import torch
    from tqdm import tqdm

    from common.io import ImageReadError
    from minerals.data import eval_transform, to_tensor

    tf = eval_transform(img_size)
    bar = tqdm(total=len(files), desc="predict", unit="patch", file=sys.stderr, disable=not progress)
    for b0 in range(0, len(files), batch_size):
        batch, idx = [], []
        for i in range(b0, min(b0 + batch_size, len(files))):
            try:
                batch.append(tf(to_tensor(read_patch(files[i]))))
                idx.append(i)
            except ImageReadError as err:
                yield i, None, str(err)
            except MemoryError:  # a huge image under the pixel limit on a small machine: this file only
                yield i, None, f"{files[i]}: not enough memory to decode this image"
        if batch:  # padded to batch_size: the CPU kernels' rounding depends on the batch size (~1e-6 in the
            # logits), so every patch is classified in a batch of one size, and a shard gives the single run's digits
            x = torch.stack(batch + batch[-1:] * (batch_size - len(batch)))
            with torch.no_grad():
                logits = model(x.to(device, memory_format=torch.channels_last))[:len(batch)]
                probs = (logits.float() / temperature).softmax(1).cpu().numpy()
            for i, p in zip(idx, probs):
                yield i, p, None
        bar.update(min(b0 + batch_size, len(files)) - b0)
    bar.close()


def option_problems(args) -> list[str]:
    """Option values predict.py and evaluate.py cannot work with, each naming the option."""
    problems = []
    if (why := threshold_problem(args.threshold)) is not None:
        problems.append(f"--threshold {why}")
    if args.threads < 1:
        problems.append(f"--threads {args.threads}: give at least 1 CPU thread")
    if getattr(args, "batch_size", 1) < 1:
        problems.append(f"--batch-size {args.batch_size}: give at least 1 patch per batch")
    return problems


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="*", help="patch files and/or folders, searched recursively (default: the "
                   "patches the checkpoint was trained on, e.g. runs/minerals/samples/patches)")
    p.add_argument("--data", default=None, help="a folder of patches (same as a positional input)")
    p.add_argument("--checkpoint", default=None,
                   help="best.pt written by train.py (default: runs/minerals/train/best.pt of make train-minerals, "
                        "else runs/minerals_demo/scratch/best.pt of make demo-minerals)")
    p.add_argument("--threshold", type=float, default=None,
                   help="confidence threshold in [0, 1]: a patch whose most likely mineral has a lower calibrated "
                        "probability is 'unknown'; 0 rejects nothing, 0.5 means at least even odds (default: the "
                        "checkpoint's, chosen on held-out patches)")
    p.add_argument("--out", default="-", help="JSON file to write once complete, replaced atomically (default: "
                                              "stdout)")
    p.add_argument("--batch-size", type=int, default=32, help="patches per forward pass")
    p.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True,
                   help="on CPU, run the network traced and frozen by TorchScript (same outputs, faster); "
                        "--no-jit runs plain PyTorch")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to run (auto: cuda when available)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (at least 1)")
    add_shard_argument(p)
    args = p.parse_args(argv)
    for problem in option_problems(args):
        p.error(problem)
    if args.out != "-" and Path(args.out).is_dir():
        p.error(f"--out {args.out} is a folder; give the JSON file to write")
    if args.out == "-" and launcher_env()[1] > 1:
        p.error("under torchrun every process needs its own file: give --out results.json "
                "(written as results.shard-I-of-N.json)")
    return args


def default_inputs(meta: dict, checkpoint: Path) -> list[str]:
    """The patches the checkpoint was trained on (``<its --data>/patches``), said on stderr."""
    patches = Path(str(meta["config"].get("data", ""))) / "patches"
    if not patches.is_dir():
        raise SystemExit(f"error: give patch files or folders (the patches {checkpoint} was trained on, {patches}, "
                         "are not here: make train-minerals or make demo-minerals extracts them)")
    print(f"no input given: classifying {patches} (the patches {checkpoint} was trained on)", file=sys.stderr)
    return [str(patches)]


def write_results(text: str, out: str, shard) -> None:
    """``text`` to stdout (``out`` "-") or atomically to ``out`` (its shard's name under ``--shard``)."""
    if out == "-":
        sys.stdout.write(text)
        return
    path = shard_path(out, shard)
    try:
        remove_leftovers(path.parent, [path.name])  # the temporary file of a run killed while writing
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:  # a full disk, a read-only folder: one line, not a traceback
        raise SystemExit(f"error: --out {path}: cannot write the results ({err.strerror or err})") from None
    print(f"wrote {path}", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from minerals.runtime import pick_device

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cuda" and launcher_env()[1] > 1:  # torchrun: one GPU per process
        device = torch.device("cuda", launcher_env()[2])
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    try:
        model, meta = load_classifier(checkpoint, device, args.jit)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    threshold = meta["threshold"] if args.threshold is None else args.threshold
    inputs = ([args.data] if args.data else []) + args.inputs or default_inputs(meta, checkpoint)
    files = collect_files(inputs)  # keys are decided on the full list, so every shard names files alike
    n_all = len(files)
    files = select_shard(files, args.shard, key=lambda kf: kf[0])  # sorted by key; every N-th one of them
    part = f" (shard {args.shard[0]}/{args.shard[1]} of {n_all})" if args.shard else ""
    print(f"{len(files)} files{part}, {meta['backbone']} from {checkpoint}, threshold {threshold:.2f}, "
          f"temperature {meta['temperature']:.3g}", file=sys.stderr)
    results: dict[str, dict] = {}
    errors = 0
    t0 = time.time()
    for i, probs, err in predict_probs(model, [f for _, f in files], meta["img_size"], device, args.batch_size,
                                       meta["temperature"], progress=len(files) > 4 * args.batch_size):
        key = files[i][0]
        if err is not None:
            errors += 1
            print(f"error: {err}", file=sys.stderr)
            results[key] = {"confidence": 0.0, "result": UNKNOWN}  # the brief's format: nothing recognised
        else:
            results[key] = json_entry(probs, threshold)
    results = {k: results[k] for k, _ in files}  # sorted keys: the form `python -m common.shard merge` writes
    write_results(dumps_json(results, indent=2) + "\n", args.out, args.shard)
    n_ok = len(files) - errors
    print(f"{n_ok} classified, {errors} unreadable (of {len(files)} files), "
          f"{n_ok / max(time.time() - t0, 1e-9):.1f} patches/s", file=sys.stderr)
    if not files:
        return 0 if args.shard and n_all else 2  # an empty shard (more workers than files) is fine
    return 2 if n_ok == 0 else (1 if errors else 0)


if __name__ == "__main__":
    sys.exit(main())
