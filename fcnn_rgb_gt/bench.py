"""Benchmark the default on the real data, pair against pair: one record of it in benchmarks/fcnn.json, and figures.

    python fcnn_rgb_gt/bench.py --data ../shared/data/fcnn                # what `make bench-fcnn` runs
    python fcnn_rgb_gt/bench.py --data ../shared/data/fcnn --skip-train   # re-score the runs already in --runs

The cross-pair protocol: train.py with its defaults is trained on each pair of the pool (``train_substitute/`` and
the ``extra/*`` pairs of the same source, by default those named ``dubai_*``) once per ``--seeds``, into
``<runs>/<pair>/seed<S>/``, and each run's ``best.pt`` predicts every other pair of the pool with predict.py's
defaults (the checkpoint's threshold, the share limit, the clean-up): a matrix of building IoU, train pair x test
pair. The record gives each cell over the seeds, the matrix mean (of the cells' seed means), its worst cell and the
spread of the per-seed matrix means. The runs on ``train_substitute/`` also predict the other ``extra/*`` pairs
(another source), reported apart. Predict is timed in a fresh process on the training image and on the same image
tiled 2x2 (4x the area): seconds, CPU seconds, peak resident memory it adds, and the time over the FLOP bound (the
four convolutions' FLOPs at this CPU's float32 torch.mm rate). The record: ``{task, what, command, config, data,
machine, load, date_utc, metrics, timings}``. The first seed's run on ``train_substitute/`` also gives
``docs/dubai_loss_vs_epochs.png`` and ``docs/dubai_prediction.png`` (a crop of a test pair; the Dubai pairs are
CC0). Other settings, the network's ceiling and the tiling seams are studies: see studies/README.md.
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
from fcnn_rgb_gt.config import CLEAN_RADIUS, DOCS, MAX_SHARE, REPO_ROOT, TrainConfig

TRAIN_PY = Path(__file__).with_name("train.py")
TARGET_IOU = 0.60  # the building IoU asked for on every test pair
FIGURE_PAIR = "dubai_t8_p5"  # the test pair of the prediction figure (CC0), when present
POOL_PREFIX = "dubai_"  # extra/* pairs of the training pair's own source: they join the cross-pair matrix
# the decision settings (building probability threshold, share limit --max-share (0: none), clean-up radius)
# every test pair is also scored at, for the leave-one-training-pair-out choice of predict's defaults ("nested")
GRID = [(t, k, r) for t in (0.5, 0.55, 0.6, 0.65, 0.7) for k in (0, 2) for r in (0, 3, 6, 9)]
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


def cross_pairs(data: Path, names: list[str] | None = None) -> tuple[list[Path], list[Path]]:
    """``(pool, others)``: the pairs of the cross-pair matrix (``train_substitute/`` first, then the ``extra/*``
    pairs named in ``names``, default those starting with POOL_PREFIX) and the remaining ``extra/*`` pairs.
    Raises BenchError when a named pair is missing or the pool holds fewer than two pairs."""
    train_dir, pairs = find_pairs(data) or (None, [])
    if train_dir is None:
        return [], []
    by_name = {d.name: d for d in pairs}
    missing = [n for n in names or [] if n not in by_name]
    if missing:
        raise BenchError(f"{data / 'extra'}: no pair {', '.join(missing)} (rgb.png and gt.png) for --pool")
    pool = [by_name[n] for n in names] if names else [d for d in pairs if d.name.startswith(POOL_PREFIX)]
    if not pool:
        raise BenchError(f"{data / 'extra'}: no pair of the training pair's source (named {POOL_PREFIX}*) to "
                         "cross with train_substitute/; name them with --pool")
    return [train_dir, *pool], [d for d in pairs if d not in pool]


def train_run(train_dir: Path, out: Path, seed: int, threads: int = 0, flags: tuple[str, ...] = ()) -> float:
    """train.py with its defaults and ``flags`` (no time limit) in a fresh process; its wall time in seconds."""
    cmd = [sys.executable, str(TRAIN_PY), "--data", str(train_dir), "--out", str(out), "--seed", str(seed),
           "--max-minutes", "0", *(["--threads", str(threads)] if threads else []), *flags]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return round(time.perf_counter() - t0, 1)


def score_run(run: Path, pairs: list[Path]) -> dict:
    """A run's ``best.pt`` with predict.py's defaults (its weights, threshold and share limit, the clean-up) scored
    on every pair: building IoU, F1, precision, recall, accuracy, the threshold used, the share of pixels marked
    building (``share``; ``true_share``: the gt's) and ``grid``: the IoU at each setting of GRID."""
    import torch

    from common.metrics import iou, segmentation_report
    from fcnn_rgb_gt.data import read_gt
    from fcnn_rgb_gt.infer import decide, load_checkpoint, predict_probs

    model, ckpt = load_checkpoint(run / "best.pt", torch.device("cpu"))
    row = ckpt["history"][-1]
    threshold, prior = float(ckpt.get("threshold", 0.5)), ckpt.get("input_stats", {}).get("building_share", 0.0)
    scores = {"epochs_run": ckpt["epoch"], "val_iou": row["val_iou"],
              "threshold": round(threshold, 4), "train_loop_seconds": row["seconds"], "pairs": {}}
    for d in pairs:
        image = read_rgb(d / "rgb.png")
        gt = read_gt(d / "gt.png", image.shape[:2], d / "rgb.png").astype(bool)
        prob = predict_probs(model, image)
        pred, used = decide(prob, threshold, CLEAN_RADIUS, prior, MAX_SHARE)
        rep = segmentation_report(pred, gt)
        scores["pairs"][d.name] = {**{k: round(v, 4) for k, v in rep.items() if k != "dice"},  # dice == f1
                                   "threshold": round(used, 4), "share": round(float(pred.mean()), 4),
                                   "true_share": round(float(gt.mean()), 4),
                                   "grid": [round(float(iou(decide(prob, t, r, prior, k)[0], gt)), 4)
                                            for t, k, r in GRID]}
        print(f"  {run}: {d.name} IoU {rep['iou']:.4f}  F1 {rep['f1']:.4f}  marked {pred.mean():.1%} "
              f"(truth {gt.mean():.1%})", flush=True)
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
    from fcnn_rgb_gt.infer import decide, load_checkpoint, predict_probs, set_threads
    from fcnn_rgb_gt.model import flops_per_pixel

    set_threads(0)
    model, stored = load_checkpoint(ckpt, torch.device("cpu"))
    threshold, prior = float(stored.get("threshold", 0.5)), stored.get("input_stats", {}).get("building_share", 0.0)
    image = np.tile(read_rgb(image_path), (repeat, repeat, 1))
    predict_probs(model, image[:256, :256])  # warm-up (first-call allocations, oneDNN kernel choice)
    rate = matmul_gflops()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    rss_before = _vm_kib("VmRSS") / 1024
    times, cpus = [], []
    for _ in range(2):
        t0, c0 = time.perf_counter(), time.process_time()
        decide(predict_probs(model, image), threshold, CLEAN_RADIUS, prior, MAX_SHARE)  # predict's mask
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    h, w = image.shape[:2]
    bound = flops_per_pixel(model.cfg.scales) * h * w / (rate * 1e9)
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


def nested(scores: dict[str, dict[int, dict]], pool: list[str], seeds: list[int]) -> dict:
    """predict's decision settings chosen without the cells they are scored on: for each training pair held out,
    the GRID setting (threshold, share limit, clean-up radius) with the best mean of the other training pairs'
    cells (seed means), scored on the held-out pair's cells. The matrix mean of those cells, its per-seed spread, the
    choices, and every GRID setting's matrix mean (chosen on all cells, as a user tuning on the matrix would)."""
    grids = {(train, test): np.array([scores[train][s]["pairs"][test]["grid"] for s in seeds])  # seeds x GRID
             for train in pool for test in pool if test != train}
    chosen, cells = {}, {}
    for held in pool:
        fit = np.mean([g.mean(0) for (train, _), g in grids.items() if train != held], axis=0)
        k = int(np.argmax(fit))
        chosen[held] = dict(zip(("threshold", "max_share", "clean_radius"), GRID[k]))
        cells.update({f"{train}->{test}": g[:, k] for (train, test), g in grids.items() if train == held})
    per_seed = np.mean(list(cells.values()), axis=0)
    by_setting = np.mean([g.mean(0) for g in grids.values()], axis=0)
    return {"matrix_mean_iou": round(float(per_seed.mean()), 4),
            "worst_cell": round(float(min(c.mean() for c in cells.values())), 4),
            "matrix_mean_per_seed": spread([round(float(v), 4) for v in per_seed]), "chosen": chosen,
            "matrix_mean_by_setting": {"/".join(map(str, g)): round(float(v), 4) for g, v in zip(GRID, by_setting)}}


def metrics(scores: dict[str, dict[int, dict]], pool: list[str]) -> dict:
    """The record's metrics from :func:`score_run` per training pair and seed: every cell (train pair -> test
    pair) of the matrix over the seeds, the matrix mean (of the cells' seed means), its worst cell, the per-seed
    matrix means, the nested figure (:func:`nested`), the share of pixels marked building against the truth, the
    other pairs (from the runs on the
    first pool pair), each run's strip IoU and threshold, and the target."""
    seeds = sorted(set.intersection(*(set(by_seed) for by_seed in scores.values())))
    cells, shares = {}, {}
    for train, by_seed in scores.items():
        for test in (t for t in pool if t != train and t in by_seed[seeds[0]]["pairs"]):
            cells[f"{train}->{test}"] = spread([by_seed[s]["pairs"][test]["iou"] for s in seeds])
            shares[f"{train}->{test}"] = {"marked": round(float(np.mean([by_seed[s]["pairs"][test]["share"]
                                                                          for s in seeds])), 4),
                                          "truth": by_seed[seeds[0]]["pairs"][test]["true_share"]}
    worst = min(cells, key=lambda c: cells[c]["mean"])
    per_seed = [round(float(np.mean([v["per_seed"][i] for v in cells.values()])), 4) for i in range(len(seeds))]
    first = scores[pool[0]]
    others = {name: spread([first[s]["pairs"][name]["iou"] for s in seeds])
              for name in first[seeds[0]]["pairs"] if name not in pool}
    mean = round(float(np.mean([v["mean"] for v in cells.values()])), 4)
    return {"seeds": seeds, "matrix_mean_iou": mean, "worst_cell": {"cell": worst, **cells[worst]},
            "matrix_mean_per_seed": spread(per_seed), "nested": nested(scores, pool, seeds),
            "cells_iou": cells, "building_share": shares,
            "other_source_iou": others,
            "val_strip_iou": {t: spread([by_seed[s]["val_iou"] for s in seeds]) for t, by_seed in scores.items()},
            "threshold": {train: [by_seed[s]["threshold"] for s in seeds] for train, by_seed in scores.items()},
            "target_iou": TARGET_IOU, "target_met_on_every_cell": all(v["mean"] >= TARGET_IOU for v in cells.values())}


def record(config: dict, data: Path, scores: dict[str, dict[int, dict]], pool: list[str],
           train_seconds: dict[str, dict[int, float]], predict: dict, load: dict, train_args: str = "",
           skip_train: bool = False) -> dict:
    """benchmarks/fcnn.json: one record of the current default."""
    import torch

    return {"task": "fcnn_rgb_gt",
            "what": "cross-pair building IoU of train.py's default with predict.py's defaults: trained on each pair "
                    "of the pool, scored on every other one, over seeds; the target is 0.60",
            "command": f"python fcnn_rgb_gt/bench.py --data {data}"
                       + (f" --train-args '{train_args}'" if train_args else "") + " --skip-train" * skip_train,
            "config": {k: v for k, v in config.items() if k not in RUN_FIELDS},
            "data": {"pool": pool, "other_source": list(scores[pool[0]][min(scores[pool[0]])]["pairs"])},
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, "
                       f"{predict['1x']['threads']} threads",
            "load": load, "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "metrics": metrics(scores, pool),
            "timings": {"train_seconds": train_seconds,
                        "train_loop_seconds": {t: [s["train_loop_seconds"] for s in by_seed.values()]
                                               for t, by_seed in scores.items()},
                        "predict": predict}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--data", default=str(REPO_ROOT / "data" / "fcnn"), help="folder with train_substitute/ and extra/")
    p.add_argument("--runs", default=str(REPO_ROOT / "runs" / "fcnn_bench"), help="where the training runs go")
    p.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "fcnn.json"), help="the record")
    p.add_argument("--docs", default=str(DOCS), help="where the figures of the first seed's run go")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one training run per seed")
    p.add_argument("--pool", nargs="+", default=None, metavar="NAME",
                   help=f"extra/* pairs crossed with train_substitute/ (default: those named {POOL_PREFIX}*)")
    p.add_argument("--skip-train", action="store_true", help="score the runs already in --runs (<pair>/seed<S>/)")
    p.add_argument("--threads", type=int, default=0, help="train.py --threads of every run (0: its default)")
    p.add_argument("--train-args", default="", metavar="FLAGS",
                   help='train.py options added to every run, to measure a variant the same way (e.g. "--scales 1,2")')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from fcnn_rgb_gt.figures import run_figures
    from fcnn_rgb_gt.infer import read_checkpoint

    data, runs = Path(args.data), Path(args.runs)
    try:
        pool, others = cross_pairs(data, args.pool)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not pool:
        print(f"bench-fcnn: skipped, no real data at {data / 'train_substitute'} "
              "(run: make bench-fcnn DATA_ROOT=../shared/data)")
        return 0
    start, seconds, scores = load_avg(), {}, {}
    for train_dir in pool:
        tests = [d for d in pool if d != train_dir] + (others if train_dir == pool[0] else [])
        for seed in args.seeds:
            run = runs / train_dir.name / f"seed{seed}"
            if not args.skip_train:
                seconds.setdefault(train_dir.name, {})[seed] = train_run(train_dir, run, seed, args.threads,
                                                                         tuple(args.train_args.split()))
            scores.setdefault(train_dir.name, {})[seed] = score_run(run, tests)
    first = runs / pool[0].name / f"seed{args.seeds[0]}"
    config = read_checkpoint(first / "best.pt", keys=("config",))["config"]
    predict = predict_cost(first / "best.pt", pool[0] / "rgb.png")
    figure_pair = next((d for d in pool if d.name == FIGURE_PAIR), pool[1])
    for path in run_figures(first, figure_pair, Path(args.docs), "dubai", f"{figure_pair.name}, seed "
                            f"{args.seeds[0]} of the default trained on {pool[0].name}"):
        print(f"wrote {path}")
    report = record({**asdict(TrainConfig()), **config}, data, scores, [d.name for d in pool], seconds, predict,
                    {"start": start, "end": load_avg()}, args.train_args, args.skip_train)
    write_json(args.out, report)
    m = report["metrics"]
    print(f"matrix mean IoU {m['matrix_mean_iou']}, worst cell {m['worst_cell']['cell']} {m['worst_cell']['mean']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
