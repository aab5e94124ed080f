"""Benchmark on the real shared subset: train on a fixed seeded split, test on the rest, write benchmarks/airbus.json.

    python airbus_ships/bench.py --data ../shared/data/airbus        # or: make bench-ships DATA_ROOT=../shared/data

The 210 images are split by image (stratified ship / no ship, seed 0) into 70% training (train.py holds out
its own 15% of these for validation and for choosing the ship / no-ship rule) and 30% test. train.py runs
with its default settings; test.py predicts the test images. The record (one, of this run: the file is
replaced) holds the Kaggle score, dice, ship / no-ship accuracy, where the score is lost, the training time,
test.py's images/s, the peak memory of each step, the machine and its load. Skips (exit 0) when the folder is
missing or holds generated demo data.
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
SPLIT_SEED = 0        # the benchmark's split: fixed, so that every record scores the same test images
TEST_FRACTION = 0.3
WHAT = ("train.py with its default settings on 70% of the shared real subset (split by image, stratified, seed 0; "
        "train.py keeps 15% of them for validation), test.py's scores on the other 30% (the test split)")


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


def write_split(data: Path, out: Path, test_fraction: float = TEST_FRACTION,
                seed: int = SPLIT_SEED) -> tuple[Path, Path, int, int]:
    """``out/split/{train,test}.csv`` (rows of ``data/masks.csv``): a seeded split by image, stratified ship / no
    ship. Returns the two paths and the numbers of training and test images."""
    from airbus_ships.data import read_mask_table, split_by_image
    table = read_mask_table(data / "masks.csv", data / "images")
    train, test = split_by_image(table.frame, test_fraction, seed)
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


def make_record(run: Path, data: dict, command: str, load: dict, train_run: tuple[float, float],
                test_run: tuple[float, float]) -> dict:
    """The benchmark record of a finished run folder: train.py's and test.py's outputs there, with ``data`` (the
    split), the command, the machine's ``load`` and the ``(wall seconds, peak MiB)`` of the two steps."""
    metrics = json.loads((run / "test" / "metrics.json").read_text())
    summary = json.loads((run / "train_summary.json").read_text())
    keys = ("kaggle_score", "dice_ship_images_mean", "dice_pixels", "iou_pixels", "iou_ship_images_mean",
            "ship_no_ship_accuracy", "per_image", "ships_by_size")
    return {
        "task": "airbus_ships",
        "what": WHAT,
        "command": command,
        "config": json.loads((run / "model" / "config.json").read_text()),
        "data": {**data, "test_ship_images": metrics.get("ship_images")},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load": load,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        # test.py's scores of the test split; per_image / ships_by_size: where the Kaggle score is lost
        "metrics": {**{k: metrics[k] for k in keys},
                    "ship_rule": json.loads((run / "model" / "postprocess.json").read_text())},
        "timings": {"epochs": summary["epochs_logged"], "train_minutes_fit": summary["train_minutes"],
                    "train_minutes_wall": train_run[0] / 60, "test_wall_seconds": test_run[0],
                    "test_images_per_second": metrics["images_per_second"],
                    "peak_memory_mib": {"train": round(train_run[1]), "test": round(test_run[1])}},
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/airbus", help="the real shared subset (images/ + masks.csv)")
    p.add_argument("--out", default="runs/airbus_bench", help="run folder (split, model, test outputs)")
    p.add_argument("--json", default=str(HERE.parent / "benchmarks" / "airbus.json"),
                   help="the record to write (replaced)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="passed to train.py and test.py")
    p.add_argument("--train-args", default="",
                   help="extra train.py arguments, e.g. '--seed 1' to measure the seed spread or a variant on the same "
                        "split (give --json another file: benchmarks/airbus.json records the default)")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile; stored with the load")
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not (data / "masks.csv").is_file() or not (data / "images").is_dir():
        print(f"bench-ships: {data} holds no images/ + masks.csv; skipping (give DATA_ROOT=../shared/data)")
        return
    if is_demo(data):
        print(f"bench-ships: {data} is generated demo data; benchmarks need the real set; skipping")
        return
    load_start = os.getloadavg()
    train_csv, test_csv, n_train, n_test = write_split(data, out)
    py = sys.executable
    train_run = run_measured([py, str(HERE / "train.py"), "--data", str(data), "--csv", str(train_csv), "--out",
                              str(out), "--device", args.device] + args.train_args.split())
    test_run = run_measured([py, str(HERE / "test.py"), "--data", str(data), "--csv", str(test_csv),
                             "--model", str(out / "model" / "best.keras"), "--out", str(out / "test"),
                             "--overlays", "0", "--device", args.device])
    split = {"path": str(data), "split_seed": SPLIT_SEED, "test_fraction": TEST_FRACTION, "train_images": n_train,
             "test_images": n_test}
    load = {"average_at_start": load_start, "average_at_end": os.getloadavg(), "note": args.note}
    command = " ".join(["python airbus_ships/bench.py", *(sys.argv[1:] if argv is None else argv)])
    record = make_record(out, split, command, load, train_run, test_run)
    write_json(args.json, record)
    print(dumps_json({"kaggle_score": record["metrics"]["kaggle_score"],
                      "dice_ship_images_mean": record["metrics"]["dice_ship_images_mean"],
                      **{k: record["timings"][k] for k in ("train_minutes_wall", "test_images_per_second")}}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
