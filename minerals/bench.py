"""Benchmark on the real minerals photos: both defaults on a fixed, seeded, stratified group-aware split.

    make bench-minerals DATA_ROOT=../shared/data                                  # fold 0 (~35 min on 2 cores)
    make bench-minerals DATA_ROOT=../shared/data MINERALS_BENCH_ARGS="--folds 5"  # all five folds (~2 h 50 min)
    python minerals/bench.py --data ../shared/data/minerals --folds 5 --models transfer,transfer_lite0,transfer_lite2
    python minerals/bench.py --data ../shared/data/minerals --out runs/minerals_bench --json benchmarks/minerals.json

Extracts samples once, trains the from-scratch OreNet and the EfficientNet-Lite1 transfer model at 240 px
(``--models``: also EfficientNet-Lite0/2 at their native 224/260 px) with their default settings with validation
folds 0 .. N-1 of a 5-fold StratifiedGroupKFold (seed 0), evaluates fold 0 in full (per class, open set, inference
speed), with more than one fold fits each model's temperature and threshold on the pooled out-of-fold predictions of
the folds' last epochs (``<out>/<model>_calibration.json``: what ``train.py --val-fold -1 --calibration`` of that
recipe stores), and writes ONE record of the current default to ``--json`` (the previous record is replaced: git
keeps the history): task, what, command, config, data, machine, load, date_utc, metrics (fold 0 in full, accuracy /
macro-F1 per fold and their mean, the brief's targets), timings, note. A finished run whose config matches is reused
(delete ``--out`` to retrain). Skips with a message (exit 0) when the data is missing or is demo data. Also draws
the README's figures of these runs into ``--figures``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common.config import HelpFormatter
from common.demo import is_demo
from common.io import dumps_json, list_images, write_json
from minerals import evaluate, train
from minerals.checkpoint import REMOVED_OPTIONS, removed_options_in_use
from minerals.config import CLASSES, PHOTOS_RECORD, TRANSFER_SIZES
from minerals.evaluate import labelled_patches
from minerals.extract_samples import extract
from minerals.figures import bench_figures, folds_figure, oof_reliability_figure
from minerals.predict import load_classifier, predict_probs

RUNS = {"scratch": [], "transfer": ["--backbone", "efficientnet_lite1"],
        "transfer_lite0": ["--backbone", "efficientnet_lite0"], "transfer_lite2": ["--backbone", "efficientnet_lite2"]}
DEFAULT_MODELS = ("scratch", "transfer")  # the two defaults; the larger Lites on request (--models)
TARGETS = {"scratch": {"accuracy": 0.90, "macro_f1": 0.88},  # the brief's
           **{name: {"accuracy": 0.95} for name in RUNS if name.startswith("transfer")}}
IGNORED = {"threads", "device", "resume", "export", "out", "time_budget_min"}  # do not change what a run learns
#   (a budget that cuts the epochs shows in the epochs config.json records)
UNUSED = {"orenet": {"freeze", "backbone_lr_scale"}, **{b: {"width"} for b in TRANSFER_SIZES}}  # options a
#   backbone ignores; (--val-fold -1 and --calibration: a bench run always validates)
SPLIT = ("StratifiedGroupKFold(5, shuffle, seed 0) over the extracted patches; groups = source photo or the "
         "manifest's dup_group; metrics on the validation mineral patches (closed set, 7 classes); the kept "
         "checkpoint is the epoch with the best validation macro-F1")


def run_dir(out: Path, name: str, fold: int) -> Path:
    """Fold 0 at ``out/<name>`` (what report.py reads), the other folds under ``out/folds/``."""
    return out / name if fold == 0 else out / "folds" / f"{name}_f{fold}"


def train_run(name: str, samples: Path, run: Path, fold: int, seed: int, threads: int, device: str) -> dict:
    """train.py's result.json of the default ``name`` on validation fold ``fold``; a finished run of the same
    config is reused."""
    args = ["--data", str(samples), "--out", str(run), "--seed", str(seed), "--threads", str(threads),
            "--device", device, "--val-fold", str(fold)] + RUNS[name] + ([] if fold == 0 else ["--no-export"])
    cfg = train.parse_args(args)
    skip = IGNORED | UNUSED[cfg.backbone]
    want = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    want["photos"] = photos_folder(cfg.photos)
    if (run / "result.json").exists() and (run / "config.json").exists():
        saved = json.loads((run / "config.json").read_text())
        # options added since the run was made count as their "off" default (what the run did): -1 "backbone's
        # default" options resolved as the run's backbone resolves them; no MixUp before --mix existed, no whole
        # photos before --photos
        off = dataclasses.asdict(dataclasses.replace(train.Config(backbone=cfg.backbone), mix=0.0,
                                                     photos="").resolve())
        have = {k: v for k, v in {**off, **saved}.items() if k not in skip and k not in REMOVED_OPTIONS}
        have["photos"] = photos_folder(have["photos"])
        if have == want and not removed_options_in_use(saved):
            print(f"{name} fold {fold}: reusing the finished run in {run}", file=sys.stderr)
            return json.loads((run / "result.json").read_text())
        print(f"{name} fold {fold}: {run} holds a run with another config; retraining", file=sys.stderr)
    subprocess.run([sys.executable, str(Path(__file__).with_name("train.py"))] + args, check=True)
    return json.loads((run / "result.json").read_text())


def photos_folder(photos: str) -> str:
    """A --photos setting as one spelling, so that a relative and an absolute path of one folder compare equal
    (its real path; "" for none)."""
    return os.path.realpath(photos) if photos else ""


def throughput(checkpoint: Path, files: list[Path], threads: int, passes: int = 3) -> float:
    """Patches per second of the whole inference path (decode, preprocess, forward) on CPU: the best of
    ``passes`` passes over ``files``, after two warm-up batches (the TorchScript-frozen network is optimised
    during its first two calls: a long run's speed is the one after them)."""
    import torch

    torch.set_num_threads(threads)
    model, meta = load_classifier(checkpoint, torch.device("cpu"))
    for _ in range(2):
        list(predict_probs(model, files[:32], meta["img_size"], torch.device("cpu")))
    rates = []
    for _ in range(passes):
        t = time.perf_counter()
        n = sum(p is not None for _, p, _ in predict_probs(model, files, meta["img_size"], torch.device("cpu")))
        rates.append(n / (time.perf_counter() - t))
    return max(rates)


def fold0_figures(run: Path, samples: Path, result: dict, threads: int) -> tuple[dict, dict]:
    """(metrics, timings) of a fold-0 run: evaluate.py's figures on its validation patches, inference speed."""
    report = evaluate.main(["--checkpoint", str(run / "best.pt"), "--data", str(samples), "--split", "val",
                            "--threads", str(threads), "--device", "cpu"])
    files = [f for f, _ in labelled_patches(samples, run / "split.csv", "val")]
    c = report["closed_set"]
    metrics = {"accuracy": round(c["accuracy"], 4), "macro_f1": round(c["macro_f1"], 4),
               "per_class_f1": {k: round(v["f1-score"], 4) for k, v in c["per_class"].items()},
               "threshold": report["threshold"],
               "open_set_accuracy_at_threshold": round(report["open_set"]["accuracy"], 4),
               "coverage_at_threshold": round(report["coverage_at_threshold"], 4), "best_epoch": result["best_epoch"],
               "n_val_mineral_patches": report["n_mineral_patches"], "n_val_patches": report["n_patches"]}
    timings = {"train_minutes": round(result["train_seconds"] / 60, 2),
               "train_threads": json.loads((run / "config.json").read_text())["threads"],
               "train_peak_rss_mb": round(result["peak_rss_mb"], 1),
               "inference_patches_per_s": round(throughput(run / "best.pt", files, threads), 1)}
    return metrics, timings


def oof_calibration(name: str, out: Path, samples: Path, folds: int) -> dict:
    """The temperature and threshold of ``name``'s recipe fitted on the pooled out-of-fold predictions of its fold
    runs' last epochs (last.pt: an all-photos run ships its last epoch), with the calibration error before, after,
    and cross-fitted (each fold scaled by the temperature fitted on the other folds), coverage and accuracy at the
    threshold and at 0.5, and each fold's own last-epoch temperature (the spread)."""
    import torch

    from minerals.decision import (
        answered_at,
        calibrate,
        choose_threshold,
        expected_calibration_error,
        fit_temperature,
        reliability,
    )

    cpu, probs, labels, fold_of, per_fold = torch.device("cpu"), [], [], [], {}
    for k in range(folds):
        run = run_dir(out, name, k)
        model, meta = load_classifier(run / "last.pt", cpu)
        pairs = labelled_patches(samples, run / "split.csv", "val")
        for i, p, _ in predict_probs(model, [f for f, _ in pairs], meta["img_size"], cpu):  # raw: temperature 1
            if p is not None:
                probs.append(p)
                labels.append(CLASSES.index(pairs[i][1]))
                fold_of.append(k)
        per_fold[str(k)] = round(meta["temperature"], 4)
    probs, labels, fold_of = np.stack(probs), np.asarray(labels), np.asarray(fold_of)
    t = fit_temperature(probs, labels)
    crossed = np.concatenate([calibrate(probs[fold_of == k], fit_temperature(probs[fold_of != k], labels[fold_of != k]))
                              for k in range(folds)])
    cal = calibrate(probs, t)
    thr = choose_threshold(cal, labels)

    def at(th: float) -> dict:  # (None: none answered)
        return {k: None if math.isnan(v) else round(v, 4) for k, v in answered_at(cal, labels, th).items()}

    cfg = json.loads((run_dir(out, name, 0) / "config.json").read_text())
    rec = {"backbone": cfg["backbone"], "img_size": cfg["img_size"], "epochs": cfg["epochs"], "temperature": t,
           "threshold": thr, "held_out_patches": int(len(labels)),
           "ece_uncalibrated": round(expected_calibration_error(probs, labels), 4),
           "ece": round(expected_calibration_error(cal, labels), 4),
           "ece_cross_fitted": round(expected_calibration_error(crossed, labels), 4),  # (folds in order)
           "at_threshold": at(thr), "at_0.5": at(0.5), "per_fold_last_epoch_temperature": per_fold,
           "reliability": reliability(cal, labels),  # of the pooled predictions with the pooled temperature
           "source": f"bench.py: pooled out-of-fold predictions of the last epochs of folds 0-{folds - 1}"}
    write_json(out / f"{name}_calibration.json", rec)
    return rec


def model_metrics(name: str, fold0: dict, results: dict[int, dict]) -> dict:
    """One model's metrics block: fold 0 in full, accuracy / macro-F1 of every fold run, their mean, the target."""
    per_fold = {str(k): {m: round(r[m], 4) for m in ("accuracy", "macro_f1")} for k, r in sorted(results.items())}
    mean = {m: round(float(np.mean([f[m] for f in per_fold.values()])), 4) for m in ("accuracy", "macro_f1")}
    return {"fold0": fold0, "per_fold": per_fold, "mean": mean, "target": TARGETS[name]}


def record(metrics: dict, timings: dict, configs: dict, data: dict, folds: int, argv: list[str], load: dict,
           note: str) -> dict:
    """The benchmark record, in the shape benchmarks/minerals.json holds."""
    return {"task": "minerals",
            "what": "the two defaults (OreNet from scratch, EfficientNet-Lite1 ImageNet transfer) trained on four "
                    "folds and scored on the fifth: closed-set accuracy / macro-F1 of the kept checkpoint on the "
                    "validation mineral patches (fold 0 in full, with open-set accuracy at the stored threshold, "
                    "and every fold run), CPU inference speed of the whole predict path",
            "command": "python minerals/bench.py " + " ".join(argv),
            "config": {**configs, "split": SPLIT, "folds": list(range(folds))},
            "data": data, "machine": machine(),
            "load": load, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "metrics": metrics, "timings": timings, "note": note}


def machine() -> str:
    """Architecture, core count and CPU model (from /proc/cpuinfo where there is one)."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return f"{platform.machine()}, {os.cpu_count()} cores" + (f", {names[0]}" if names else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--data", default="data/minerals", help="the real photos: <class>/<image> + manifest.csv")
    p.add_argument("--out", default="runs/minerals_bench", help="samples and run folders")
    p.add_argument("--json", default="benchmarks/minerals.json", help="where the record goes")
    p.add_argument("--figures", default="minerals/docs", help="where the README's figures of these runs go")
    p.add_argument("--folds", type=int, default=1, choices=range(1, 6),
                   help="train validation folds 0 .. N-1 (5: the 5-fold means the README reports)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated, of {', '.join(RUNS)} (transfer: EfficientNet-Lite1; the record of the "
                        "current defaults needs scratch and transfer)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the training and the extraction")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of training and inference")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                   help="where the trainings run (the benchmark is defined on CPU; inference is always timed on CPU)")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile; stored with the record "
                                              "(default: nothing)")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if not models or set(models) - set(RUNS):
        p.error(f"--models {args.models}: give names among {', '.join(RUNS)}")
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir() or not any(data.iterdir()):
        print(f"bench-minerals: {data} is missing; skipped (make bench-minerals DATA_ROOT=../shared/data)")
        return 0
    if is_demo(data):
        print(f"bench-minerals: {data} holds generated demo data, not the real set; skipped")
        return 0
    load_start = os.getloadavg()
    samples = out / "samples"
    # a folder extracted before photos.txt existed is extracted again: the same seeded patches, and the record
    if not (samples / "index.csv").exists() or not (samples / PHOTOS_RECORD).exists():
        extract(data, samples, seed=args.seed)
    metrics, timings, configs = {}, {}, {}
    for name in models:
        results = {k: train_run(name, samples, run_dir(out, name, k), k, args.seed, args.threads, args.device)
                   for k in range(args.folds)}
        fold0, timings[name] = fold0_figures(out / name, samples, results[0], args.threads)
        metrics[name] = model_metrics(name, fold0, results)
        if args.folds > 1:
            metrics[name]["calibration_out_of_fold"] = oof_calibration(name, out, samples, args.folds)
        saved = json.loads((out / name / "config.json").read_text())
        configs[name] = {k: v for k, v in saved.items() if k not in ("data", "out", "resume", "val_fold")}
    from minerals.runtime import peak_rss_mb

    timings["inference_peak_rss_mb"] = round(peak_rss_mb(), 1)
    index = (samples / "index.csv").read_text().splitlines()[1:]
    data_info = {"path": str(data), "photos": sum(len(list_images(d)) for d in data.iterdir() if d.is_dir()),
                 "patches": len(index)}
    rec = record(metrics, timings, configs, data_info, args.folds, sys.argv[1:] if argv is None else argv,
                 {"start": load_start, "end": os.getloadavg()}, args.note)
    # benchmarks/minerals.json holds the record of the current defaults; a comparison of other models stays in --out
    write_json(args.json if set(DEFAULT_MODELS) <= set(models) else out / "record.json", rec)
    bench_figures(out, Path(args.figures), reliability=args.folds == 1)
    folds_figure(rec, Path(args.figures) / "bench_folds.png")
    if args.folds > 1:  # the pooled out-of-fold reliability in place of fold 0's in-sample one
        oof_reliability_figure(rec, Path(args.figures) / "bench_reliability.png")
    print(dumps_json(rec, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
