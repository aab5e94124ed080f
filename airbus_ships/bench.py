"""Benchmark on the real shared subset: train on a fixed seeded split, test on the rest, write benchmarks/airbus.json.

    python airbus_ships/bench.py --data ../shared/data/airbus        # or: make bench-ships DATA_ROOT=../shared/data

The 210 images are split by image (stratified ship / no ship, seed 0) into 70% training (train.py holds out
its own 15% of these for validation and for choosing the ship / no-ship rule) and 30% test. train.py runs
with its default settings; test.py predicts the test images. Reported: Kaggle score, dice on ship images,
ship / no-ship accuracy, training time, images/s of test.py, peak memory of each step, machine load.
Skips (exit 0) when the folder is missing or holds generated demo data. ``--train-share 0.5`` trains on a
stratified half of the training images, same test images (a learning curve; README: Limits).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil

from common.demo import is_demo
from common.io import atomic_write, dumps_json, write_json

HERE = Path(__file__).resolve().parent
# the keys of one benchmark run's record: those main() writes, and a few added to a run by hand
RUN_KEYS = {"task", "data", "split", "kaggle_score", "dice_ship_images_mean", "dice_pixels", "iou_pixels",
            "iou_ship_images_mean", "ship_no_ship_accuracy", "per_image", "ships_by_size", "train_minutes_fit",
            "train_minutes_wall", "epochs", "test_images_per_second", "test_wall_seconds", "peak_memory_mib",
            "ship_rule", "train_config", "machine", "command", "model_reused",
            "label", "date_utc", "machine_speed_check", "source"}


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak resident memory in MiB of it and its children)."""
    print("$", " ".join(cmd), flush=True)
    start, peak = time.time(), 0
    proc = subprocess.Popen(cmd)
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True)))
        except psutil.Error:
            pass
        time.sleep(0.5)
    if proc.returncode:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return time.time() - start, peak / 2 ** 20


def write_split(data: Path, out: Path, test_fraction: float, seed: int,
                train_share: float = 1.0) -> tuple[Path, Path, int, int]:
    """``out/split/{train,test}.csv`` (rows of ``data/masks.csv``): a seeded split by image, stratified ship / no
    ship; with ``train_share`` < 1 only that stratified share of the training images is kept (learning curves),
    the test split stays the same. Returns the two paths and the numbers of training and test images."""
    from airbus_ships.data import read_mask_table, split_by_image
    if not 0 < train_share <= 1:
        raise ValueError(f"train_share must be in (0, 1], got {train_share}")
    table = read_mask_table(data / "masks.csv", data / "images")
    train, test = split_by_image(table.frame, test_fraction, seed)
    if train_share < 1:
        train, _ = split_by_image(train, 1 - train_share, seed)
    with open(data / "masks.csv", newline="") as f:
        rows = list(csv.reader(f))
    paths = []
    for name, part in (("train", train), ("test", test)):
        ids = set(part["ImageId"])
        path = out / "split" / f"{name}.csv"
        with atomic_write(path, "w", newline="") as f:
            csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if r[0] in ids])
        paths.append(path)
    return paths[0], paths[1], len(train), len(test)


def merge_record(previous: dict, result: dict) -> dict:
    """The new record: ``result`` on top; the previous top-level run (the keys of a result and the few added by
    hand to a run) moves to the front of "history"; every other top-level entry (studies such as
    "rule_study_run_a" or "default_repeat_run_Q", which the README points to) stays at the top level."""
    previous = dict(previous)
    history = list(previous.pop("history", []))
    run_keys = RUN_KEYS | set(result)
    studies = {k: previous.pop(k) for k in list(previous) if k not in run_keys}
    if "kaggle_score" in previous:
        history.insert(0, previous)
    return {**result, "history": history, **studies}


def reused_training(previous: dict) -> tuple[float, float]:
    """(wall seconds, peak MiB) of the training of a reused model, from the previous record; NaN for a figure it
    does not know (null there: the record it came from did not know it either)."""
    minutes, mib = previous.get("train_minutes_wall"), previous.get("peak_memory_mib", {}).get("train")
    return float("nan") if minutes is None else minutes * 60, float("nan") if mib is None else mib


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/airbus", help="the real shared subset (images/ + masks.csv)")
    p.add_argument("--out", default="runs/airbus_bench", help="run folder (split, model, test outputs)")
    p.add_argument("--json", default=str(HERE.parent / "benchmarks" / "airbus.json"), help="result file")
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0, help="split seed (fixed: keep 0 for comparable numbers)")
    p.add_argument("--train-share", type=float, default=1.0,
                   help="train on this stratified share of the training images (learning curves; test split unchanged)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="passed to train.py and test.py (the recorded runs: CPU)")
    p.add_argument("--reuse-model", action="store_true",
                   help="keep the model already in --out (no training; the ship rule is chosen again)")
    p.add_argument("--train-args", default="", help="extra train.py arguments, e.g. '--input-mode resize'")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile; stored with the result")
    args = p.parse_args()
    data, out = Path(args.data), Path(args.out)
    if not (data / "masks.csv").is_file() or not (data / "images").is_dir():
        print(f"bench-ships: {data} holds no images/ + masks.csv; skipping (give DATA_ROOT=../shared/data)")
        return
    if is_demo(data):
        print(f"bench-ships: {data} is generated demo data; benchmarks need the real set; skipping")
        return
    load_start = os.getloadavg()
    train_csv, test_csv, n_train, n_test = write_split(data, out, args.test_fraction, args.seed, args.train_share)
    py = sys.executable
    train_cmd = [py, str(HERE / "train.py"), "--data", str(data), "--csv", str(train_csv), "--out", str(out),
                 "--seed", str(args.seed), "--device", args.device] + args.train_args.split()
    previous = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}  # the record so far
    if args.reuse_model:
        run_measured(train_cmd + ["--calibrate-only"])
        train_s, train_mib = reused_training(previous)
    else:
        train_s, train_mib = run_measured(train_cmd)
    test_s, test_mib = run_measured([py, str(HERE / "test.py"), "--data", str(data), "--csv", str(test_csv),
                                     "--model", str(out / "model" / "best.keras"), "--out", str(out / "test"),
                                     "--overlays", "0", "--device", args.device])
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    summary = json.loads((out / "train_summary.json").read_text())
    rule = json.loads((out / "model" / "postprocess.json").read_text())
    config = json.loads((out / "model" / "config.json").read_text())
    result = {
        "task": "airbus_ships",
        "data": str(data),
        "split": {"seed": args.seed, "test_fraction": args.test_fraction, "train_share": args.train_share,
                  "train_images": n_train,
                  "test_images": n_test, "test_ship_images": metrics.get("ship_images")},
        "kaggle_score": metrics["kaggle_score"],
        "dice_ship_images_mean": metrics["dice_ship_images_mean"],
        "dice_pixels": metrics["dice_pixels"],
        "iou_pixels": metrics["iou_pixels"],
        "iou_ship_images_mean": metrics["iou_ship_images_mean"],
        "ship_no_ship_accuracy": metrics["ship_no_ship_accuracy"],
        "per_image": metrics["per_image"],  # test.py's breakdown: F2 of ship images, empty / false predictions
        "ships_by_size": metrics["ships_by_size"],  # true ships found at IoU > 0.5, per size bin
        "train_minutes_fit": summary["train_minutes"],
        "train_minutes_wall": None if train_s != train_s else train_s / 60,  # NaN: not known
        "epochs": summary["epochs_logged"],
        "test_images_per_second": metrics["images_per_second"],
        "test_wall_seconds": test_s,
        "peak_memory_mib": {"train": None if train_mib != train_mib else round(train_mib),  # NaN: not known
                            "test": round(test_mib)},
        "ship_rule": rule,
        "train_config": config,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
                    "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "note": args.note},
        "command": " ".join(["python airbus_ships/bench.py"] + sys.argv[1:]),
        "model_reused": args.reuse_model,  # True: training figures are those of the run that trained the model
    }
    result = merge_record(previous, result)
    write_json(args.json, result)
    print(dumps_json({k: result[k] for k in ("kaggle_score", "dice_ship_images_mean", "ship_no_ship_accuracy",
                                             "train_minutes_wall", "test_images_per_second")}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
