"""Learning curve: the benchmark run on a stratified share of its training images, scored on the same test split.

    python -m airbus_ships.studies.learning_curve --data ../shared/data/airbus --share 0.5 --out runs/airbus_curve_50

Writes the benchmark's split (``bench.write_split``: seed 0, 30% test), keeps ``--share`` of its training images
(stratified ship / no ship, seed 0; every row of a kept image), then trains and tests as ``bench.py`` does and
writes the record, in bench.py's shape plus ``train_share``, to ``OUT/learning_curve.json`` (never to
``benchmarks/``). With ``--share 0.5`` on the shared subset: 73 of the 147 training images (EXPERIMENTS.md).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from airbus_ships.bench import HERE, make_record, run_measured, write_split
from common.io import atomic_write, write_json


def keep_share(train_csv: Path, images_dir: Path, share: float, seed: int = 0) -> int:
    """Rewrite ``train_csv`` (a mask table) with a stratified ``share`` of its images (all rows of each kept
    image); returns the number of images kept."""
    from airbus_ships.data import read_mask_table, split_by_image
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if share == 1:
        return len(read_mask_table(train_csv, images_dir).frame)
    kept, _ = split_by_image(read_mask_table(train_csv, images_dir).frame, 1 - share, seed)
    with open(train_csv, newline="") as f:
        rows = list(csv.reader(f))
    ids = set(kept["ImageId"])
    with atomic_write(train_csv, "w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if r[0] in ids])
    return len(kept)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/airbus", help="the real shared subset (images/ + masks.csv)")
    p.add_argument("--share", type=float, default=0.5, help="share of the benchmark's training images to train on")
    p.add_argument("--out", default="runs/airbus_curve", help="run folder; the record goes to OUT/learning_curve.json")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="passed to train.py and test.py")
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    load_start = os.getloadavg()
    train_csv, test_csv, _, n_test = write_split(data, out)
    n_train = keep_share(train_csv, data / "images", args.share)
    py = sys.executable
    train_run = run_measured([py, str(HERE / "train.py"), "--data", str(data), "--csv", str(train_csv), "--out",
                              str(out), "--device", args.device])
    test_run = run_measured([py, str(HERE / "test.py"), "--data", str(data), "--csv", str(test_csv), "--model",
                             str(out / "model" / "best.keras"), "--out", str(out / "test"), "--overlays", "0",
                             "--device", args.device])
    split = {"path": str(data), "train_images": n_train, "test_images": n_test, "train_share": args.share}
    load = {"average_at_start": load_start, "average_at_end": os.getloadavg(), "note": ""}
    command = " ".join(["python -m airbus_ships.studies.learning_curve", *(sys.argv[1:] if argv is None else argv)])
    record = make_record(out, split, command, load, train_run, test_run)
    print(f"Kaggle score {record['metrics']['kaggle_score']:.3f} with {n_train} training images; "
          f"wrote {write_json(out / 'learning_curve.json', record)}")


if __name__ == "__main__":
    main()
