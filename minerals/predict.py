"""Classify image patches into the 7 minerals or "unknown"; JSON results to stdout, logs to stderr.

    python minerals/predict.py [PATCH_OR_FOLDER ...] [--checkpoint runs/minerals/train/best.pt] \
        [--threshold 0.5] > results.json

Output: ``{"<filename>": {"confidence": float, "result": "<mineral>" | "unknown"}}``. ``confidence`` is the
probability of the most likely mineral; below the threshold (by default the one chosen on validation and
stored in the checkpoint) the result is ``"unknown"`` (see minerals/decision.py). Keys are file names, or
paths relative to the given folder (the full path as given when two inputs share one; a file given twice is
classified once). A file that cannot be read is named with the reason on stderr and keeps the format in the
JSON as ``{"confidence": 0.0, "result": "unknown"}`` (nothing recognised); the batch goes on, and the exit
status is 1 when any file failed (2 when none could be read or none was found).

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
import pickle
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from common.io import IMAGE_EXTENSIONS, ImageReadError, atomic_write, dumps_json, read_rgb
from common.shard import add_shard_argument, launcher_env, select_shard, shard_path
from minerals.data import CLASSES, eval_transform, to_tensor
from minerals.decision import UNKNOWN, decide, threshold_problem
from minerals.model import build_model
from minerals.runtime import DEVICES, pick_device

DEFAULT_CHECKPOINT = "runs/minerals/train/best.pt"
DEFAULT_INPUT = "runs/minerals/samples/patches"  # what `make train-minerals` extracted
CHECKPOINT_KEYS = ("model", "classes", "backbone", "img_size", "threshold", "config")  # what inference reads


def frozen_for_cpu(model: torch.nn.Module, img_size: int) -> torch.nn.Module:
    """The eval-mode network traced and frozen by TorchScript for CPU inference
    (https://pytorch.org/docs/stable/generated/torch.jit.freeze.html: weights inlined as constants, BatchNorm
    folded into the convolutions). Same outputs to about 1e-6, any batch size, faster on CPU than eager PyTorch
    (the measurements: minerals/EXPERIMENTS.md)."""
    x = torch.rand(2, 3, img_size, img_size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's maintenance-mode notices
        return torch.jit.freeze(torch.jit.trace(model.eval(), x))


def load_classifier(path: str | Path, device: torch.device, jit: bool = True) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, checkpoint metadata: threshold, img_size, classes, backbone, config).

    ``jit``: on CPU, the network frozen by ``frozen_for_cpu``."""
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"{path}: checkpoint not found (train first: make train-minerals)")
    try:  # a truncated, foreign or directory path is one line naming the file, not a traceback
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as err:
        raise SystemExit(f"error: {path}: not a checkpoint of minerals/train.py "
                         f"({type(err).__name__}: {err})") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise SystemExit(f"error: {path}: not a checkpoint of minerals/train.py (no {', '.join(missing)})")
    if ck["classes"] != CLASSES:
        raise SystemExit(f"{path}: trained for classes {ck['classes']}, this code expects {CLASSES}")
    try:
        model = build_model(ck["backbone"], len(CLASSES), ck.get("width", 1.0), pretrained=False)
        model.load_state_dict(ck["model"])
    except (ValueError, RuntimeError) as err:  # an unknown backbone, weights of another shape
        raise SystemExit(f"error: {path}: its weights do not fit {ck['backbone']!r} "
                         f"({str(err).splitlines()[0]})") from None
    model = model.to(device, memory_format=torch.channels_last).eval()
    meta = {k: v for k, v in ck.items() if k not in ("model", "optimizer", "scheduler", "train_model", "ema")}
    if ck["config"].get("tta"):  # an earlier version's mirror averaging; the weights are the same network
        print(f"note: {path} was validated with mirror averaging (--tta), which this version no longer does; its "
              "threshold was chosen on those averaged probabilities", file=sys.stderr)
    return (frozen_for_cpu(model, ck["img_size"]) if jit and device.type == "cpu" else model), meta


def collect_files(inputs: list[str]) -> list[tuple[str, Path]]:
    """(JSON key, path) for every file given or found (recursively) in a given folder."""
    found: list[tuple[str, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            every = sorted(f for f in p.rglob("*") if f.is_file())
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


@torch.no_grad()
def predict_probs(model, files: list[Path], img_size: int, device: torch.device, batch_size: int = 32):
    """Yield ``(index, probs (8,) | None, error | None)`` for ``files``, in batches; bad files never stop it."""
    tf = eval_transform(img_size)
    for b0 in range(0, len(files), batch_size):
        batch, idx = [], []
        for i in range(b0, min(b0 + batch_size, len(files))):
            try:
                batch.append(tf(to_tensor(read_rgb(files[i]))))
                idx.append(i)
            except ImageReadError as err:
                yield i, None, str(err)
        if batch:
            x = torch.stack(batch).to(device, memory_format=torch.channels_last)
            probs = model(x).float().softmax(1).cpu().numpy()
            for i, p in zip(idx, probs):
                yield i, p, None


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*",
                   help=f"patch files and/or folders, searched recursively (default: {DEFAULT_INPUT})")
    p.add_argument("--data", default=None, help="a folder of patches (same as a positional input)")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="best.pt written by train.py")
    p.add_argument("--threshold", type=float, default=None,
                   help="confidence threshold in [0, 1]: a patch whose most likely mineral has a lower probability "
                        "is 'unknown'; 0 rejects nothing (default: the checkpoint's, chosen on validation)")
    p.add_argument("--out", default="-", help="JSON file to write (default: stdout)")
    p.add_argument("--batch-size", type=int, default=32, help="patches per forward pass")
    p.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True,
                   help="on CPU, run the network traced and frozen by TorchScript (same outputs, faster); "
                        "--no-jit runs plain PyTorch")
    p.add_argument("--device", default="auto", choices=DEVICES)
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
    inputs = ([args.data] if args.data else []) + args.inputs
    if not inputs:
        if not Path(DEFAULT_INPUT).is_dir():
            p.error(f"give patch files or folders (the default {DEFAULT_INPUT} does not exist: `make train-minerals` "
                    "extracts it)")
        print(f"no input given: classifying {DEFAULT_INPUT}", file=sys.stderr)
        inputs = [DEFAULT_INPUT]
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cuda" and launcher_env()[1] > 1:  # torchrun: one GPU per process
        device = torch.device("cuda", launcher_env()[2])
    model, meta = load_classifier(args.checkpoint, device, args.jit)
    threshold = meta["threshold"] if args.threshold is None else args.threshold
    files = collect_files(inputs)  # keys are decided on the full list, so every shard names files alike
    n_all = len(files)
    files = select_shard(files, args.shard, key=lambda kf: kf[0])  # sorted by key; every N-th one of them
    part = f" (shard {args.shard[0]}/{args.shard[1]} of {n_all})" if args.shard else ""
    print(f"{len(files)} files{part}, {meta['backbone']} from {args.checkpoint}, threshold {threshold:.2f}",
          file=sys.stderr)
    results: dict[str, dict] = {}
    errors = 0
    t0 = time.time()
    for i, probs, err in predict_probs(model, [f for _, f in files], meta["img_size"], device, args.batch_size):
        key = files[i][0]
        if err is not None:
            errors += 1
            print(f"error: {err}", file=sys.stderr)
            results[key] = {"confidence": 0.0, "result": UNKNOWN}  # the brief's format: nothing recognised
        else:
            results[key] = json_entry(probs, threshold)
    results = {k: results[k] for k, _ in files}  # sorted keys: the form `python -m common.shard merge` writes
    text = dumps_json(results, indent=2) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        out = shard_path(args.out, args.shard)
        try:
            with atomic_write(out, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as err:  # a full disk, a read-only folder: one line, not a traceback
            raise SystemExit(f"error: --out {out}: cannot write the results ({err.strerror or err})") from None
        print(f"wrote {out}", file=sys.stderr)
    n_ok = len(files) - errors
    print(f"{n_ok} classified, {errors} unreadable, {n_ok / max(time.time() - t0, 1e-9):.1f} patches/s",
          file=sys.stderr)
    if not files:
        return 0 if args.shard and n_all else 2  # an empty shard (more workers than files) is fine
    return 2 if n_ok == 0 else (1 if errors else 0)


if __name__ == "__main__":
    sys.exit(main())
