"""Benchmark on the real minerals photos: a fixed, seeded, stratified group-aware split of the data.

    make bench-minerals DATA_ROOT=../shared/data
    python minerals/bench.py --data ../shared/data/minerals --out runs/minerals_bench --json benchmarks/minerals.json

Extracts samples once, trains the from-scratch OreNet and the EfficientNet-Lite0 transfer model with their
default settings on the training folds (fold 0 of a 5-fold StratifiedGroupKFold, seed 0, is validation),
evaluates both on the validation patches and times inference. A finished run whose config matches is
reused (delete ``--out`` to retrain). Skips with a message (exit 0) when the data is missing or is demo data.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from common.demo import is_demo
from common.io import dumps_json, write_json
from minerals import evaluate, train
from minerals.evaluate import labelled_patches
from minerals.extract_samples import extract
from minerals.predict import load_classifier, predict_probs

RUNS = {"scratch": [], "transfer": ["--backbone", "efficientnet_lite0"]}
IGNORED = {"threads", "device", "resume", "export", "out", "time_budget_min"}  # do not change what a run learns
#   (a budget that cuts the epochs shows in the epochs config.json records)
UNUSED = {"orenet": {"freeze", "backbone_lr_scale"}, "efficientnet_lite0": {"width"}}  # options a backbone ignores


def train_run(name: str, samples: Path, out: Path, seed: int, threads: int, device: str = "cpu") -> dict:
    run = out / name
    args = ["--data", str(samples), "--out", str(run), "--seed", str(seed), "--threads", str(threads),
            "--device", device] + RUNS[name]
    cfg = train.parse_args(args)
    skip = IGNORED | UNUSED[cfg.backbone]
    want = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    if (run / "result.json").exists() and (run / "config.json").exists():
        # options added since the run was made count as their "off" default (what the run did)
        # (-1 "backbone's default" options resolved as the run's backbone resolves them; no MixUp before --mix)
        off = dataclasses.asdict(dataclasses.replace(train.Config(backbone=cfg.backbone), mix=0.0).resolve())
        have = {**{k: v for k, v in off.items() if k not in skip},
                **{k: v for k, v in json.loads((run / "config.json").read_text()).items() if k not in skip}}
        if have == want:
            print(f"{name}: reusing the finished run in {run}", file=sys.stderr)
            return json.loads((run / "result.json").read_text())
        print(f"{name}: {run} holds a run with another config; retraining", file=sys.stderr)
    subprocess.run([sys.executable, str(Path(__file__).with_name("train.py"))] + args, check=True)
    return json.loads((run / "result.json").read_text())


def throughput(checkpoint: Path, files: list[Path], threads: int) -> float:
    """Patches per second of the whole inference path (decode, preprocess, forward) on CPU."""
    torch.set_num_threads(threads)
    model, meta = load_classifier(checkpoint, torch.device("cpu"))
    list(predict_probs(model, files[:32], meta["img_size"], torch.device("cpu")))  # warm-up
    t = time.perf_counter()
    n = sum(p is not None for _, p, _ in predict_probs(model, files, meta["img_size"], torch.device("cpu")))
    return n / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/minerals", help="the real photos: <class>/<image> + manifest.csv")
    p.add_argument("--out", default="runs/minerals_bench", help="samples and run folders")
    p.add_argument("--json", default="benchmarks/minerals.json", help="where the figures go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                   help="where the two trainings run (the benchmark is defined on CPU; inference is always timed on CPU)")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile; stored with the result")
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir() or not any(data.iterdir()):
        print(f"bench-minerals: {data} is missing; skipped (make bench-minerals DATA_ROOT=../shared/data)")
        return 0
    if is_demo(data):
        print(f"bench-minerals: {data} holds generated demo data, not the real set; skipped")
        return 0
    load_start = os.getloadavg()
    samples = out / "samples"
    if not (samples / "index.csv").exists():
        extract(data, samples, seed=args.seed)
    results = {}
    for name in RUNS:
        r = train_run(name, samples, out, args.seed, args.threads, args.device)
        ck = out / name / "best.pt"
        report = evaluate.main(["--checkpoint", str(ck), "--data", str(samples), "--split", "val",
                                "--threads", str(args.threads), "--device", "cpu"])
        files = [f for f, _ in labelled_patches(samples, out / name / "split.csv", "val")]
        c = report["closed_set"]
        results[name] = {
            "backbone": json.loads((out / name / "config.json").read_text())["backbone"],
            "accuracy": round(c["accuracy"], 4), "macro_f1": round(c["macro_f1"], 4),
            "per_class_f1": {k: round(v["f1-score"], 4) for k, v in c["per_class"].items()},
            "threshold": report["threshold"],
            "open_set_accuracy_at_threshold": round(report["open_set"]["accuracy"], 4),
            "coverage_at_threshold": round(report["coverage_at_threshold"], 4),
            "best_epoch": r["best_epoch"], "train_minutes": round(r["train_seconds"] / 60, 2),
            "train_threads": json.loads((out / name / "config.json").read_text())["threads"],
            "train_peak_rss_mb": round(r["peak_rss_mb"], 1),
            "inference_patches_per_s": round(throughput(ck, files, args.threads), 1),
            "n_val_mineral_patches": report["n_mineral_patches"], "n_val_patches": report["n_patches"],
        }
    results["inference_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    results["setup"] = {
        "split": "fold 0 of StratifiedGroupKFold(5, shuffle, seed 0) over extracted patches; groups = source photo "
                 "or manifest dup_group; metrics on the validation mineral patches (closed set, 7 classes)",
        "data": str(data), "threads": args.threads, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_end": os.getloadavg(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_average_at_start": load_start,
        "note": args.note,
    }
    old = Path(args.json)
    if old.exists():  # hand-written records of variants tried (command, load, figures) survive a re-run
        kept = json.loads(old.read_text())  # what other commands measured stays
        results["experiments"] = kept.get("experiments", [])
        if "five_fold" in kept:
            results["five_fold"] = kept["five_fold"]
    write_json(args.json, results)
    print(dumps_json(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
