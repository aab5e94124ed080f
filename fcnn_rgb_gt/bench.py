"""Benchmark the default on the real data: one record of it in benchmarks/fcnn.json, and its figures.

    python fcnn_rgb_gt/bench.py --data ../shared/data/fcnn                # what `make bench-fcnn` runs
    python fcnn_rgb_gt/bench.py --data ../shared/data/fcnn --skip-train   # re-score the runs already in --runs

train.py with its defaults is trained on ``train_substitute/`` once per ``--seeds`` (each run's own held-out
strip picks its epoch); each run's ``best.pt`` is scored on every ``extra/*`` pair (building IoU at probability
0.5: the test figure, mean / min / max over the seeds). Predict is timed in a fresh process on the training
image and on the same image tiled 2x2 (4x the area): seconds, CPU seconds, peak resident memory it adds, and
the time over the FLOP bound (the four convolutions' FLOPs at this CPU's float32 torch.mm rate). The record:
``{task, what, command, config, data, machine, load, date_utc, metrics, timings}``. The first seed's run also
gives ``docs/dubai_loss_vs_epochs.png`` and ``docs/dubai_prediction.png`` (a crop of a test pair; the Dubai
pairs are CC0). Other settings, the network's ceiling and the tiling seams are studies: see studies/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from common.config import HelpFormatter
from common.demo import is_demo
from common.io import read_rgb, write_json
from fcnn_rgb_gt.config import DOCS, REPO_ROOT, TrainConfig

TRAIN_PY = Path(__file__).with_name("train.py")
TARGET_IOU = 0.60  # the building IoU asked for on every test pair
FIGURE_PAIR = "dubai_t8_p5"  # the test pair of the prediction figure (CC0), when present
# left out of the record's config, which holds the training choices: paths, device, threads and --resume say
# where and how a run went, and the seeds are the metrics' own
RUN_FIELDS = ("data", "rgb", "gt", "out", "device", "threads", "resume", "seed")


class BenchError(ValueError):
    """The data cannot be benchmarked; ``str(err)`` says why."""


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def find_pairs(data: Path) -> tuple[Path, list[Path]] | None:
    """``(train_substitute/, the extra/* pair folders)``; None for demo data (nothing to benchmark)."""
    train_dir, extra_dir = data / "train_substitute", data / "extra"
    if not (train_dir / "rgb.png").is_file() or is_demo(data) or is_demo(train_dir):
        return None
    pairs = sorted(d for d in extra_dir.iterdir() if (d / "rgb.png").is_file() and (d / "gt.png").is_file()
                   and not is_demo(d)) if extra_dir.is_dir() else []
    if not pairs:  # checked before any training
        raise BenchError(f"{extra_dir}: no test pair (a folder holding rgb.png and gt.png) to score on")
    return train_dir, pairs


def train_run(train_dir: Path, out: Path, seed: int, threads: int = 0) -> float:
    """train.py with its defaults (no time limit) in a fresh process; its wall time in seconds."""
    cmd = [sys.executable, str(TRAIN_PY), "--data", str(train_dir), "--out", str(out), "--seed", str(seed),
           "--max-minutes", "0", *(["--threads", str(threads)] if threads else [])]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return round(time.perf_counter() - t0, 1)


def score_run(run: Path, pairs: list[Path]) -> dict:
    """A run's best epoch, its validation-strip IoU there, and its report on every pair at probability 0.5."""
    import torch

    from common.metrics import segmentation_report
    from fcnn_rgb_gt.data import read_gt
    from fcnn_rgb_gt.infer import load_checkpoint, predict_probs, read_checkpoint

    model, ckpt = load_checkpoint(run / "best.pt", torch.device("cpu"))
    last = read_checkpoint(run / "last.pt", keys=("history",))
    row = ckpt["history"][ckpt["best_epoch"] - 1]
    scores = {"best_epoch": ckpt["best_epoch"], "val_iou": row["val_iou"], "epochs_run": len(last["history"]),
              "train_loop_seconds": last["history"][-1]["seconds"], "pairs": {}}
    for d in pairs:
        image = read_rgb(d / "rgb.png")
        gt = read_gt(d / "gt.png", image.shape[:2], d / "rgb.png").astype(bool)
        rep = segmentation_report(predict_probs(model, image) >= 0.5, gt)
        scores["pairs"][d.name] = {k: round(v, 4) for k, v in rep.items() if k != "dice"}  # dice == f1
        print(f"  {run.name} {d.name}: IoU {rep['iou']:.4f}  F1 {rep['f1']:.4f}", flush=True)
    return scores


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    """Best float32 torch.mm rate over a few tries with the current thread count, GFLOP per second."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def _vm_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_predict(ckpt: str, image_path: str, repeat: int) -> dict:
    """(Runs in a fresh process.) Time and peak memory of predicting ``image_path`` tiled ``repeat x repeat``,
    best of two. The peak is the resident-set high-water mark reset just before (``clear_refs``), so it counts
    what predict allocates, not the image decoding; the torch.mm rate is measured just before, same load."""
    import torch

    from common.tiling import MAX_TILE, tile_grid
    from fcnn_rgb_gt.infer import load_checkpoint, predict_probs, set_threads
    from fcnn_rgb_gt.model import flops_per_pixel

    set_threads(0)
    model, _ = load_checkpoint(ckpt, torch.device("cpu"))
    image = np.tile(read_rgb(image_path), (repeat, repeat, 1))
    predict_probs(model, image[:256, :256])  # warm-up (first-call allocations, oneDNN kernel choice)
    rate = matmul_gflops()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    rss_before = _vm_kib("VmRSS") / 1024
    times, cpus = [], []
    for _ in range(2):
        t0, c0 = time.perf_counter(), time.process_time()
        predict_probs(model, image)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    h, w = image.shape[:2]
    bound = flops_per_pixel() * h * w / (rate * 1e9)
    return {"size": [w, h], "seconds": round(min(times), 2), "cpu_seconds": round(min(cpus), 2),
            "tiles": len(tile_grid(h, w, MAX_TILE, 32)), "peak_increase_mib": round(_vm_kib("VmHWM") / 1024
                                                                                    - rss_before, 1),
            "matmul_gflops_per_s": round(rate, 1), "flop_bound_seconds": round(bound, 2),
            "predict_over_flop_bound": round(min(times) / bound, 2), "threads": torch.get_num_threads(),
            "load_avg": load_avg()}


def predict_cost(ckpt: Path, image_path: Path) -> dict:
    """:func:`measure_predict` of the image (``1x``) and of it tiled 2x2 (``4x_area``), each in a fresh process."""
    out = {}
    print(f"timing predict on {image_path.name} and on it tiled 2x2, each in a fresh process",
          flush=True)
    for name, repeat in (("1x", 1), ("4x_area", 2)):
        code = (f"import json; from fcnn_rgb_gt.bench import measure_predict; "
                f"print(json.dumps(measure_predict({str(ckpt)!r}, {str(image_path)!r}, {repeat})))")
        done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO_ROOT)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  predict {name}: {out[name]}", flush=True)
    return out


def spread(values: list[float]) -> dict:
    return {"mean": round(float(np.mean(values)), 4), "min": min(values), "max": max(values), "per_seed": values}


def metrics(scores: dict[int, dict]) -> dict:
    """The record's metrics from :func:`score_run` per seed: IoU at 0.5 on each pair over the seeds, the
    validation strip's, the best epochs, the first seed's full report per pair, and the target."""
    first = scores[min(scores)]
    ious = {name: spread([s["pairs"][name]["iou"] for s in scores.values()]) for name in first["pairs"]}
    return {"seeds": sorted(scores), "iou_at_0.5": ious,
            "val_strip_iou_at_0.5": spread([s["val_iou"] for s in scores.values()]),
            "best_epoch_per_seed": [s["best_epoch"] for s in scores.values()],
            f"seed{min(scores)}_report": first["pairs"], "target_iou": TARGET_IOU,
            "target_met_on_every_pair": all(v["mean"] >= TARGET_IOU for v in ious.values())}


def record(config: dict, data: Path, scores: dict[int, dict], train_seconds: dict[int, float], predict: dict,
           load: dict) -> dict:
    """benchmarks/fcnn.json: one record of the current default."""
    import torch

    train_dir, names = data / "train_substitute", list(scores[min(scores)]["pairs"])
    return {"task": "fcnn_rgb_gt",
            "what": "building IoU at probability 0.5 of train.py's default on the test pairs extra/* (trained on "
                    "train_substitute/ only), over seeds; the target is 0.60 on every pair",
            "command": f"python fcnn_rgb_gt/bench.py --data {data}",
            "config": {k: v for k, v in config.items() if k not in RUN_FIELDS},
            "data": {"train": str(train_dir), "test_pairs": names},
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, "
                       f"{predict['1x']['threads']} threads",
            "load": load, "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "metrics": metrics(scores),
            "timings": {"train_seconds_per_seed": [train_seconds.get(s) for s in sorted(scores)],
                        "train_loop_seconds_per_seed": [scores[s]["train_loop_seconds"] for s in sorted(scores)],
                        "predict": predict}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--data", default=str(REPO_ROOT / "data" / "fcnn"), help="folder with train_substitute/ and extra/")
    p.add_argument("--runs", default=str(REPO_ROOT / "runs" / "fcnn_bench"), help="where the training runs go")
    p.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "fcnn.json"), help="the record")
    p.add_argument("--docs", default=str(DOCS), help="where the figures of the first seed's run go")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one training run per seed")
    p.add_argument("--skip-train", action="store_true", help="score the runs already in --runs (seed<S>/)")
    p.add_argument("--threads", type=int, default=0, help="train.py --threads of every run (0: its default)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from fcnn_rgb_gt.figures import run_figures
    from fcnn_rgb_gt.infer import read_checkpoint

    data, runs = Path(args.data), Path(args.runs)
    try:
        found = find_pairs(data)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if found is None:
        print(f"bench-fcnn: skipped, no real data at {data / 'train_substitute'} "
              "(run: make bench-fcnn DATA_ROOT=../shared/data)")
        return 0
    train_dir, pairs = found
    start, seconds, scores = load_avg(), {}, {}
    for seed in args.seeds:
        if not args.skip_train:
            seconds[seed] = train_run(train_dir, runs / f"seed{seed}", seed, args.threads)
        scores[seed] = score_run(runs / f"seed{seed}", pairs)
    first = runs / f"seed{args.seeds[0]}"
    config = read_checkpoint(first / "best.pt", keys=("config",))["config"]
    predict = predict_cost(first / "best.pt", train_dir / "rgb.png")
    figure_pair = next((d for d in pairs if d.name == FIGURE_PAIR), pairs[0])
    for path in run_figures(first, figure_pair, Path(args.docs), "dubai", f"{figure_pair.name}, seed "
                            f"{args.seeds[0]} of the default"):
        print(f"wrote {path}")
    report = record({**asdict(TrainConfig()), **config}, data, scores, seconds, predict,
                    {"start": start, "end": load_avg()})
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
