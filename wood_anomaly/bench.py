"""Benchmark on the real wood photos: train on all of them (unlabeled), predict them, score against the
consensus masks and image labels, side by side with a classical baseline. Writes benchmarks/wood.json.

    make bench-wood DATA_ROOT=../shared/data
    python wood_anomaly/bench.py --data ../shared/data/wood --runs runs/wood_bench --out benchmarks/wood.json

Baseline: per-pixel Euclidean distance of the RGB colour from the photo's median colour (no learning), raw
at full size and computed like the model's map (same scale and smoothing).
Image ranking: image AUROC of the photo scores (majority label of image_labels.csv), and whether every
unanimously anomalous photo scores above every unanimously normal one. Training never sees masks or labels.

Fusion weights (``--weights``): the same trained model's deep and colour maps fused with other weights
(0: the colour map alone, 1: the deep map alone), scored the same way; what the deep features add.
Other seeds (``--extra-seeds``): train + predict again with other training seeds (bank, calibration and
colour-reference samples), to show how much the figures move with the random samples alone.
The JSON stores the command line as typed, the train/predict commands as run, and the load average.
Skips (exit 0) when the folder is missing or holds generated demo data.
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
from scipy import ndimage

from common.demo import is_demo
from common.io import dumps_json, list_images, read_mask, read_rgb, write_json
from common.metrics import image_auroc
from wood_anomaly.data import resize, resize_map
from wood_anomaly.evaluate import evaluate, pixel_metrics
from wood_anomaly.model import fuse

HERE = Path(__file__).resolve().parent


def median_colour_distance(image: np.ndarray) -> np.ndarray:
    """The classical baseline: ``(H, W)`` distance of every pixel's RGB from the photo's median colour."""
    med = np.median(image.reshape(-1, 3), axis=0)
    return np.linalg.norm(image.astype(np.float32) - med.astype(np.float32), axis=2)


def run(cmd: list[str]) -> float:
    """Run a script of this package in a child process; return its wall time in seconds."""
    print("+", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def rnd(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def child_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def peak_child_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB


def vote_groups(labels_csv: Path) -> tuple[dict[str, int], list[str], list[str]]:
    """Majority labels, unanimously anomalous stems and unanimously normal stems from image_labels.csv."""
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    majority = {r["stem"]: int(r["majority_label"]) for r in rows}
    pos = [r["stem"] for r in rows if int(r["n_positive_votes"]) == int(r["n_votes"])]
    neg = [r["stem"] for r in rows if int(r["n_positive_votes"]) == 0]
    return majority, pos, neg


def shown(cmd: list[str]) -> str:
    """A child's command line as a user would type it (``python`` for this interpreter, paths as given)."""
    return shlex.join(["python", *(os.path.relpath(c) if c.startswith(str(HERE)) else c for c in cmd[1:])])


def train_predict(py: str, data: Path, runs: Path, train_args: list[str]) -> tuple[list[str], list[str]]:
    """The train and predict command lines of one benchmark run into ``runs``."""
    train = [py, str(HERE / "train.py"), "--data", str(data), "--out", str(runs), *train_args]
    predict = [py, str(HERE / "predict.py"), "--data", str(data), "--model", str(runs / "model.pt"),
               "--out", str(runs / "pred")]
    if "--device" in train_args:
        predict += ["--device", train_args[train_args.index("--device") + 1]]
    return train, predict


def labels_and_scores(rows: dict[str, dict]) -> tuple[dict[str, str], dict[str, float]]:
    return ({s: r["label"] for s, r in rows.items()},
            {s: float(r["score"]) for s, r in rows.items() if r["status"] == "ok"})


def read_rows(pred: Path) -> dict[str, dict]:
    with open(pred / "predictions.csv", newline="") as f:
        return {Path(r["image"]).stem: r for r in csv.DictReader(f)}


def fusion_weights(model_path: Path, data: Path, masks_dir: Path, weights: list[float], device: str,
                   ranking) -> dict:
    """Pixel and image metrics of the trained model's two standardised maps fused with each of ``weights``
    (0: colour map alone, 1: deep map alone), computed by predict.score_maps exactly as predict.py does, at
    full size; the label-free threshold and area rule of the checkpoint apply to every fused map."""
    import torch

    from wood_anomaly import predict

    dev = predict.resolve_device(device)
    model, cfg, ckpt = predict.load_model(model_path, dev)
    if cfg.colour_stride <= 0:
        return {"note": "the model has no colour channel (--colour-stride 0): no fusion to vary"}
    threshold = ckpt["threshold"]
    parts, masks, shapes, stems = [], [], [], []
    with torch.no_grad():
        for path in list_images(data / "images"):
            image = read_rgb(path)
            parts.append(predict.score_maps(model, image, cfg, dev, ckpt))
            shapes.append(image.shape[:2])
            stems.append(path.stem)
            masks.append(read_mask(masks_dir / f"{path.stem}.png", {0: 0}, default=1).astype(bool))
    out = {}
    for w in weights:
        maps = [resize_map(fuse(deep, colour, w), shape) for (deep, colour), shape in zip(parts, shapes)]
        binary = [m > threshold for m in maps]
        scores = {s: float(m.max() / threshold) for s, m in zip(stems, maps)}
        out[f"deep_weight={w:g}"] = {
            "pixel": pixel_metrics(maps, masks, binary),
            "image_ranking": ranking(scores),
            "labels": {s: predict.photo_label(int(b.sum()), b.mean(), cfg.min_area) for s, b in zip(stems, binary)}}
        del maps, binary
    return out


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Run from the repository root.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="../shared/data/wood", help="real wood folder (images/, masks/consensus/)")
    p.add_argument("--runs", default="runs/wood_bench", help="where the run's model and predictions go")
    p.add_argument("--out", default="benchmarks/wood.json", help="benchmark JSON")
    p.add_argument("--train-args", default="", help="extra train.py arguments, e.g. '--k 50'")
    p.add_argument("--seed", type=int, default=0, help="training seed (train.py --seed; predict uses the checkpoint's)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="device of train.py, predict.py and the fusion-weight maps")
    p.add_argument("--weights", default="0,1",
                   help="comma-separated fusion weights to score on the same model besides its own "
                        "(0: colour map alone, 1: deep map alone; empty: none)")
    p.add_argument("--extra-seeds", default="",
                   help="comma-separated other training seeds: train + predict again with each (into <runs>/seed<N>)")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile; stored with the result")
    p.add_argument("--reuse", action="store_true",
                   help="score the model and predictions already in --runs again (no train/predict timings)")
    args = p.parse_args(argv)
    data, runs = Path(args.data), Path(args.runs)
    if not (data / "images").is_dir() or not (data / "masks" / "consensus").is_dir():
        print(f"bench-wood: {data} has no images/ and masks/consensus/ (real data); skipping. "
              "Run: make bench-wood DATA_ROOT=../shared/data")
        return
    if is_demo(data):
        print(f"bench-wood: {data} holds generated demo data, not the real photos; skipping")
        return

    py = sys.executable
    load_before = os.getloadavg()
    train_args = ["--seed", str(args.seed), "--device", args.device, *shlex.split(args.train_args)]
    train_cmd, predict_cmd = train_predict(py, data, runs, train_args)
    if args.reuse:
        train_s, train_cpu, train_peak, predict_s, peak = (None,) * 5
    else:
        train_s = run(train_cmd)
        train_peak, train_cpu = peak_child_mib(), child_cpu_s()
        predict_s = run(predict_cmd)
        peak = peak_child_mib()
    load_after = os.getloadavg()

    rows = read_rows(runs / "pred")
    masks_dir = data / "masks" / "consensus"
    deep = evaluate(runs / "pred", masks_dir, None)
    majority, unanimous_pos, unanimous_neg = vote_groups(data / "image_labels.csv")

    # the baseline twice: raw full-size distances, and computed like the model's map (at the model's scale,
    # same Gaussian smoothing, resized back), which removes JPEG noise and is the fairer comparison
    cfg = json.loads((runs / "config.json").read_text())
    base_maps, smooth_maps, masks, base_scores, smooth_scores = [], [], [], {}, {}
    for path in list_images(data / "images"):
        img = read_rgb(path)
        m = median_colour_distance(img)
        sm = ndimage.gaussian_filter(median_colour_distance(resize(img, cfg["scale"])), cfg["sigma"])
        sm = resize_map(sm, img.shape[:2])
        base_maps.append(m)
        smooth_maps.append(sm)
        masks.append(read_mask(masks_dir / f"{path.stem}.png", {0: 0}, default=1).astype(bool))
        base_scores[path.stem], smooth_scores[path.stem] = float(m.max()), float(sm.max())
    baseline = pixel_metrics(base_maps, masks)
    del base_maps
    baseline_smooth = pixel_metrics(smooth_maps, masks)

    def ranking(scores: dict[str, float]) -> dict:
        stems = [s for s in majority if s in scores]
        return {"image_auroc_majority": image_auroc([scores[s] for s in stems], [majority[s] for s in stems]),
                "unanimous_anomalous_above_clean": min(scores[s] for s in unanimous_pos)
                > max(scores[s] for s in unanimous_neg),
                "scores": {s: round(scores[s], 4) for s in stems}}

    deep_scores = {s: float(r["score"]) for s, r in rows.items() if r["status"] == "ok"}
    with open(runs / "pred" / "timings.csv", newline="") as f:
        timings = list(csv.DictReader(f))
    seconds = [float(r["seconds"]) for r in timings]
    cpu = [float(r["cpu_seconds"]) for r in timings]
    result = {
        "data": str(data), "photos": len(rows), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "wood_anomaly/bench.py", *argv]),
        "train_command": shown(train_cmd), "predict_command": shown(predict_cmd), "reused_runs": args.reuse,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_1_5_15_before": [round(x, 2) for x in load_before],
                    "load_avg_1_5_15_after": [round(x, 2) for x in load_after],
                    "note": args.note or "cpu_seconds / cores estimates the wall time on an idle machine"},
        "model": {"method": "PatchCore-style k-NN memory bank on EfficientNet-Lite0 (ImageNet) features, "
                            "fused (weighted geometric mean) with a colour-rarity map vs the photo's own cells",
                  "config": json.loads((runs / "config.json").read_text()),
                  "pixel": {k: deep[k] for k in ("pixel_auroc", "pixel_ap", "aupro_0.3", "best_f1", "best_iou",
                                                 "mask_f1", "mask_iou")},
                  "image_ranking": ranking(deep_scores),
                  "labels": {s: r["label"] for s, r in rows.items()},
                  "train_seconds_incl_model_load": rnd(train_s),
                  "train_cpu_seconds": rnd(train_cpu),
                  "predict_seconds_per_photo": round(float(np.mean(seconds)), 2) if seconds else None,
                  "predict_cpu_seconds_per_photo": round(float(np.mean(cpu)), 2) if cpu else None,
                  "predict_seconds_total_incl_writing": rnd(predict_s),
                  "peak_memory_mib": {"train": rnd(train_peak), "train_and_predict": rnd(peak)}},
        "baseline_median_colour_distance": {"pixel": baseline, "image_ranking": ranking(base_scores),
                                            "pixel_smoothed": baseline_smooth,
                                            "image_ranking_smoothed": ranking(smooth_scores)},
    }
    result["model_beats_baseline"] = {k: result["model"]["pixel"][k] > max(baseline[k], baseline_smooth[k])
                                      for k in ("pixel_auroc", "pixel_ap", "aupro_0.3", "best_f1")}
    weights = [float(w) for w in args.weights.split(",") if w.strip()]
    if weights:
        own = float(cfg["deep_weight"])
        t0 = time.perf_counter()
        result["fusion_weights"] = fusion_weights(runs / "model.pt", data, masks_dir,
                                                  sorted({*weights, own}), args.device, ranking)
        result["fusion_weights"]["note"] = (f"the trained model's maps fused with other weights (its own: {own:g}, "
                                            "which reproduces the model's figures up to float16 storage); "
                                            f"{time.perf_counter() - t0:.0f} s")
    extra = {}
    for seed in [int(v) for v in args.extra_seeds.split(",") if v.strip()]:
        seed_runs = runs / f"seed{seed}"
        seed_args = ["--seed", str(seed), "--device", args.device, *shlex.split(args.train_args)]
        seed_train, seed_predict = train_predict(py, data, seed_runs, seed_args)
        run(seed_train)
        run(seed_predict)
        seed_rows = read_rows(seed_runs / "pred")
        seed_labels, seed_scores = labels_and_scores(seed_rows)
        seed_eval = evaluate(seed_runs / "pred", masks_dir, None)
        extra[str(seed)] = {"train_command": shown(seed_train), "predict_command": shown(seed_predict),
                            "pixel": {k: seed_eval[k] for k in result["model"]["pixel"]},
                            "image_ranking": ranking(seed_scores), "labels": seed_labels}
    if extra:
        result["other_seeds"] = extra
        result["machine"]["load_avg_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.out, result)
    print(dumps_json({k: result[k] for k in ("model_beats_baseline",)}, indent=1))
    print(f"model {result['model']['pixel']}\nbaseline {baseline}\nbaseline smoothed {baseline_smooth}\n-> {args.out}")


if __name__ == "__main__":
    main()
