"""Benchmark on the real wood photos: train on all of them (unlabeled), predict them, score against the
consensus masks and image labels, side by side with a classical baseline. Writes benchmarks/wood.json.

    make bench-wood DATA_ROOT=../shared/data
    python wood_anomaly/bench.py --data ../shared/data/wood --runs runs/wood_bench --out benchmarks/wood.json

Baseline: per-pixel Euclidean distance of the RGB colour from the photo's median colour (no learning), raw
at full size and computed like the model's map (same scale and smoothing).
Image ranking: image AUROC of the photo scores (majority label of image_labels.csv), and whether every
unanimously anomalous photo scores above every unanimously normal one. Training never sees masks or labels.

Then the generalization protocols of protocols.py (``--protocols``; leave one board out, crops and their 2x
downscaled copies, the demo generator's surfaces, new synthetic woods), each trained and predicted in the
brief's setting and scored the same way, plus the F1 of the label-free masks over the best F1 of the maps.

The JSON is one record of the run: ``task, what, command, steps, config, data, machine, load, date_utc,
metrics, timings, protocols``. Skips (exit 0) when the folder is missing or holds generated demo data.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.config import HelpFormatter
from common.demo import is_demo
from common.io import dumps_json, list_images, read_mask, read_rgb, write_json
from wood_anomaly.evaluate import evaluate, pixel_metrics
from wood_anomaly.protocols import PROTOCOLS

HERE = Path(__file__).resolve().parent
PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "aupro_0.3", "best_f1", "best_iou", "best_threshold", "mask_f1", "mask_iou",
              "mask_precision", "mask_recall")
WHAT = ("train on every unlabeled photo, predict them, score the maps against masks/consensus at full resolution "
        "(all photos pooled) and the photo scores against the majority labels of image_labels.csv; the "
        "median-colour baseline scored the same way")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Run from the repository root.",
                                formatter_class=HelpFormatter)
    p.add_argument("--data", default="../shared/data/wood", help="real wood folder (images/, masks/consensus/)")
    p.add_argument("--runs", default="runs/wood_bench", help="where the run's model and predictions go")
    p.add_argument("--out", default="benchmarks/wood.json", help="benchmark JSON")
    p.add_argument("--train-args", default="", help="extra train.py options, to benchmark another configuration, "
                                                     "e.g. '--k 50' or '--seed 1'")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="device of train.py and predict.py")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile; stored with the result")
    p.add_argument("--reuse", action="store_true",
                   help="score the model and predictions already in --runs again, in seconds (no timings)")
    p.add_argument("--protocols", default=",".join(PROTOCOLS),
                   help=f"comma-separated generalization protocols run after the 7 photos ({', '.join(PROTOCOLS)}; "
                        "'none': skip them; each runs in --runs/<name>)")
    args = p.parse_args(argv)
    args.protocols = [] if args.protocols == "none" else [v.strip() for v in args.protocols.split(",") if v.strip()]
    unknown = [v for v in args.protocols if v not in PROTOCOLS]
    if unknown:
        p.error(f"--protocols: unknown {', '.join(unknown)}; known: {', '.join(PROTOCOLS)}, or none")
    return args


# ------------------------------------------------------------------------------------ train + predict
def shown(cmd: list[str]) -> str:
    """A child's command line as a user would type it (``python`` for this interpreter, paths as given)."""
    return shlex.join(["python", *(os.path.relpath(c) if c.startswith(str(HERE)) else c for c in cmd[1:])])


def commands(data: Path, runs: Path, train_args: list[str], device: str) -> tuple[list[str], list[str]]:
    """The train and predict command lines of the benchmark run into ``runs``."""
    train = [sys.executable, str(HERE / "train.py"), "--data", str(data), "--out", str(runs), "--device", device,
             *train_args]
    predict = [sys.executable, str(HERE / "predict.py"), "--data", str(data), "--model", str(runs / "model.pt"),
               "--out", str(runs / "pred"), "--device", device]
    return train, predict


def run(cmd: list[str]) -> float:
    """Run a script of this package in a child process; return its wall time in seconds."""
    print("+", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def rnd(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def children() -> tuple[float, float]:
    """CPU seconds and peak memory (MiB) of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime, r.ru_maxrss / 1024  # Linux: ru_maxrss in KiB


def train_and_predict(train_cmd: list[str], predict_cmd: list[str], pred: Path) -> dict:
    """Run both commands; their timings (wall, CPU, peak memory) and predict's per-photo means from timings.csv."""
    train_s = run(train_cmd)
    train_cpu, train_peak = children()
    predict_s = run(predict_cmd)
    with open(pred / "timings.csv", newline="") as f:
        per_photo = list(csv.DictReader(f))
    mean = {k: round(float(np.mean([float(r[k]) for r in per_photo])), 2) if per_photo else None
            for k in ("seconds", "cpu_seconds")}
    return {"reused_run": False, "train_seconds_incl_model_load": rnd(train_s), "train_cpu_seconds": rnd(train_cpu),
            "predict_seconds_per_photo": mean["seconds"], "predict_cpu_seconds_per_photo": mean["cpu_seconds"],
            "predict_seconds_total_incl_writing": rnd(predict_s),
            "peak_memory_mib": {"train": rnd(train_peak), "train_and_predict": rnd(children()[1])}}


# ---------------------------------------------------------------------------------------------- scoring
def median_colour_distance(image: np.ndarray) -> np.ndarray:
    """The classical baseline: ``(H, W)`` distance of every pixel's RGB from the photo's median colour."""
    med = np.median(image.reshape(-1, 3), axis=0)
    return np.linalg.norm(image.astype(np.float32) - med.astype(np.float32), axis=2)


def vote_groups(labels_csv: Path) -> tuple[dict[str, int], list[str], list[str]]:
    """Majority labels, unanimously anomalous stems and unanimously normal stems from image_labels.csv."""
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    majority = {r["stem"]: int(r["majority_label"]) for r in rows}
    pos = [r["stem"] for r in rows if int(r["n_positive_votes"]) == int(r["n_votes"])]
    neg = [r["stem"] for r in rows if int(r["n_positive_votes"]) == 0]
    return majority, pos, neg


def ranking(scores: dict[str, float], votes: tuple[dict[str, int], list[str], list[str]]) -> dict:
    """Image AUROC of ``stem -> photo score`` against the majority labels, and whether every unanimously
    anomalous photo scores above every unanimously normal one (``votes``: :func:`vote_groups`)."""
    from common.metrics import image_auroc

    majority, pos, neg = votes
    stems = [s for s in majority if s in scores]
    above = (min(scores[s] for s in pos if s in scores) > max(scores[s] for s in neg if s in scores)
             if any(s in scores for s in pos) and any(s in scores for s in neg) else None)
    return {"image_auroc_majority": image_auroc([scores[s] for s in stems], [majority[s] for s in stems]),
            "unanimous_anomalous_above_clean": above, "scores": {s: round(scores[s], 4) for s in stems}}


def baseline(data: Path, scale: float, sigma: float, votes) -> dict:
    """The median-colour baseline twice: raw full-size distances, and computed like the model's map (at the
    model's ``scale``, Gaussian ``sigma``, resized back), which removes JPEG noise and is the fairer comparison."""
    from scipy import ndimage

    from wood_anomaly.data import resize, resize_map

    maps: dict[str, list] = {"raw": [], "smoothed": []}
    scores: dict[str, dict] = {"raw": {}, "smoothed": {}}
    masks = []
    for path in tqdm(list_images(data / "images"), desc="baseline maps", unit="photo"):
        img = read_rgb(path)
        smooth = ndimage.gaussian_filter(median_colour_distance(resize(img, scale)), sigma)
        for kind, m in (("raw", median_colour_distance(img)), ("smoothed", resize_map(smooth, img.shape[:2]))):
            maps[kind].append(m)
            scores[kind][path.stem] = float(m.max())
        masks.append(read_mask(data / "masks" / "consensus" / f"{path.stem}.png", {0: 0}, default=1,
                               colours=True).astype(bool))
    return {kind: {"pixel": pixel_metrics(maps[kind], masks), "image": ranking(scores[kind], votes)}
            for kind in ("raw", "smoothed")}


def metrics(data: Path, pred: Path, config: dict) -> dict:
    """The model's pixel and image figures on ``pred`` (predict.py's outputs), the baseline's, and on which
    pixel metrics the model beats both forms of the baseline."""
    with open(pred / "predictions.csv", newline="") as f:
        rows = {Path(r["image"]).stem: r for r in csv.DictReader(f)}
    votes = vote_groups(data / "image_labels.csv")
    model = evaluate(pred, data / "masks" / "consensus", None)
    image = ranking({s: float(r["score"]) for s, r in rows.items() if r["status"] == "ok"}, votes)
    base = baseline(data, config["scale"], config["sigma"], votes)
    beats = {k: model[k] > max(base["raw"]["pixel"][k], base["smoothed"]["pixel"][k])
             for k in ("pixel_auroc", "pixel_ap", "aupro_0.3", "best_f1")}
    used = json.loads((pred / "threshold.json").read_text()) if (pred / "threshold.json").is_file() else {}
    return {"pixel": {k: model.get(k) for k in PIXEL_KEYS}, "threshold_used": used,
            "image": {**image, "labels": {s: r["label"] for s, r in rows.items()}},
            "baseline_median_colour": base, "model_beats_baseline": beats}


def run_protocol(name: str, data: Path, work: Path, train_args: list[str], device: str) -> dict:
    """protocols.run in a child process (its own memory and threads), its result read back from a JSON file."""
    out = work.parent / f"{name}.json"
    run([sys.executable, "-m", "wood_anomaly.protocols", name, "--data", str(data), "--work", str(work),
         "--out", str(out), "--device", device, "--train-args", shlex.join(train_args)])
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------- record
def machine(device: str) -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if device != "cpu" and torch.cuda.is_available() else None
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "gpu": gpu}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    data, runs = Path(args.data), Path(args.runs)
    if not (data / "images").is_dir() or not (data / "masks" / "consensus").is_dir():
        print(f"bench-wood: {data} has no images/ and masks/consensus/ (real data); skipping. "
              "Run: make bench-wood DATA_ROOT=../shared/data")
        return
    if is_demo(data):
        print(f"bench-wood: {data} holds generated demo data, not the real photos; skipping")
        return

    train_cmd, predict_cmd = commands(data, runs, shlex.split(args.train_args), args.device)
    load_before = os.getloadavg()
    timings = {"reused_run": True} if args.reuse else train_and_predict(train_cmd, predict_cmd, runs / "pred")
    load_after = os.getloadavg()
    config = json.loads((runs / "config.json").read_text())
    record = {
        "task": "wood_anomaly", "what": WHAT,
        "command": shlex.join(["python", "wood_anomaly/bench.py", *argv]),
        "steps": {"train": shown(train_cmd), "predict": shown(predict_cmd)},
        "config": config,
        "data": {"path": str(data), "photos": len(list_images(data / "images")), "masks": "masks/consensus"},
        "machine": machine(args.device),
        "load": {"avg_1_5_15_before": [round(x, 2) for x in load_before],
                 "avg_1_5_15_after": [round(x, 2) for x in load_after],
                 "note": args.note or "cpu_seconds / cores estimates the wall time on an idle machine"},
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "metrics": metrics(data, runs / "pred", config),
        "timings": timings,
        "protocols": {},
    }
    write_json(args.out, record)
    for name in args.protocols:  # the record is rewritten after each, so a stopped run keeps those done
        record["protocols"][name] = run_protocol(name, data, runs / name, shlex.split(args.train_args), args.device)
        write_json(args.out, record)
        print(f"{name}: {dumps_json(record['protocols'][name])}", flush=True)
    m = record["metrics"]
    print(dumps_json({"model": m["pixel"], "baseline_smoothed": m["baseline_median_colour"]["smoothed"]["pixel"],
                      "model_beats_baseline": m["model_beats_baseline"]}, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
