"""Benchmark on the real shared subset: k-fold cross-validation of train.py's default (or one fixed split), written
to benchmarks/airbus.json.

    python airbus_ships/bench.py --data ../shared/data/airbus            # 5 folds (make bench-ships DATA_ROOT=...)
    python airbus_ships/bench.py --data ../shared/data/airbus --folds 0  # the fixed 70/30 split: one training

``--folds K`` (default 5): the images are split into K folds by image, stratified ship / no ship (``cv.py``);
for each fold train.py trains its default on the other folds (keeping its own 15% of them for validation) and
predicts the fold's images; the ship rule that scores a fold is chosen on the out-of-fold maps of the other
folds. The record holds each fold's figures (Kaggle score, image recall / precision, recall by ship size <100,
100-999, >=1000 px) and their mean and spread, the rule chosen on all folds, the training times and how each
training ended. A fold whose maps are saved is not trained again (``--out`` keeps them; delete a fold's folder
to redo it). ``--folds 0``: train on 70% (split by image, stratified, seed 0), test.py on the other 30%.
The record also holds the machine and its load. Skips (exit 0) when the folder is missing or holds generated
demo data.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from common.demo import is_demo
from common.io import atomic_write, dumps_json, write_json

HERE = Path(__file__).resolve().parent
SPLIT_SEED = 0        # the benchmark's split: fixed, so that every record scores the same test images
TEST_FRACTION = 0.3
CV_WHAT = ("train.py with its default settings in {k}-fold cross-validation on the shared real subset (folds by "
           "image, stratified ship / no ship, seed 0; train.py keeps 15% of the training folds for validation); each "
           "fold scored on its out-of-fold maps with the ship rule chosen on the other folds' out-of-fold maps")
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
    from airbus_ships.cv import write_rows
    from airbus_ships.data import read_mask_table, split_by_image
    table = read_mask_table(data / "masks.csv", data / "images")
    train, test = split_by_image(table.frame, test_fraction, seed)
    paths = [write_rows(data / "masks.csv", set(part["ImageId"]), out / "split" / f"{name}.csv")
             for name, part in (("train", train), ("test", test))]
    return paths[0], paths[1], len(train), len(test)


def model_flips(fold_dir: Path) -> bool:
    """Whether the fold's model predicts with test-time flips: its train.py config's ``predict_flips`` (a config
    from before that option: train.py's default, as ``--calibrate-only`` would choose its rule)."""
    from airbus_ships.train import Config

    return json.loads((fold_dir / "model" / "config.json").read_text()).get("predict_flips", Config.predict_flips)


def predict_fold(fold_dir: Path, test_rows) -> dict:
    """Predict the fold's held-out ``test_rows`` with its best model as test.py would (:func:`model_flips`), into
    ``fold_dir/oof_probs.npz``; returns its ``fold.json`` with the prediction's time, problems and flips added."""
    from airbus_ships import cv

    start, flips = time.time(), model_flips(fold_dir)
    maps, problems = cv.predict_maps(fold_dir / "model" / "best.keras", test_rows, flips)
    cv.save_maps(fold_dir / cv.OOF_FILE, maps)
    fold_json = {**json.loads((fold_dir / "fold.json").read_text()), "oof_predict_seconds": time.time() - start,
                 "oof_flips": flips, "problems": problems}
    write_json(fold_dir / "fold.json", fold_json)
    return fold_json


def run_folds(data: Path, out: Path, k: int, train_args: list[str], device: str = "auto",
              seed: int = SPLIT_SEED, stop_after: int = 0) -> dict | None:
    """Cross-validate train.py (with ``train_args``) on ``data`` in ``k`` folds (``cv.py``); returns the record's
    ``data``, ``metrics`` and ``timings`` parts. Each fold lives in ``out/fold{i}`` (train.py's run folder, the
    fold's ``train.csv``, its ``oof_probs.npz`` and ``fold.json``: times, held-out images, train.py options); a
    fold whose maps exist is not redone (one of another cross-validation is refused). ``stop_after`` > 0: train at
    most that many folds in this call; returns None while folds remain (the same call again goes on)."""
    from airbus_ships import cv
    from airbus_ships.data import read_mask_table

    table = read_mask_table(data / "masks.csv", data / "images")
    frame = table.frame
    try:
        folds = cv.fold_of_images(frame, k, seed)
    except ValueError as err:
        sys.exit(f"bench: {data}: {err}")
    with atomic_write(out / "folds.csv", "w", newline="") as f:
        frame.assign(fold=folds)[["ImageId", "fold"]].to_csv(f, index=False)
    maps, timings, problems, trained = {}, [], list(table.problems), 0
    for i in range(k):
        fold_dir, test_rows = out / f"fold{i}", frame[folds == i]
        if not (fold_dir / cv.OOF_FILE).is_file():
            if stop_after and trained == stop_after:
                print(f"bench: stopped after {trained} new fold(s) (--stop-after); folds {i + 1}-{k} remain: run the "
                      f"same command again to go on")
                return None
            trained += 1
            train_csv = cv.write_rows(data / "masks.csv", set(frame.loc[folds != i, "ImageId"]), fold_dir / "train.csv")
            # a training cut off (killed, machine gone) left its state: train.py --resume goes on from its last epoch
            cut_off = ((fold_dir / "model" / "train_state.json").is_file()
                       and not (fold_dir / "train_summary.json").is_file())
            print(f"fold {i + 1}/{k}: train.py on {int((folds != i).sum())} images"
                  f"{' (resumed from its last epoch)' if cut_off else ''}, then its {len(test_rows)} held-out images "
                  f"are predicted", flush=True)
            wall, peak = run_measured([sys.executable, str(HERE / "train.py"), "--data", str(data), "--csv",
                                       str(train_csv), "--out", str(fold_dir), "--device", device] + train_args
                                      + (["--resume"] if cut_off else []))
            write_json(fold_dir / "fold.json", {"train_minutes_wall": wall / 60, "train_peak_memory_mib": round(peak),
                                                "resumed": cut_off,  # train_minutes_wall: the resumed part only
                                                "train_args": train_args, "test_images": sorted(test_rows["ImageId"])})
            fold_json = predict_fold(fold_dir, test_rows)
            if i + 1 < k:
                took = wall + fold_json["oof_predict_seconds"]
                print(f"fold {i + 1}/{k} took {took / 60:.1f} min: the {k - i - 1} folds left take "
                      f"~{took * (k - i - 1) / 60:.0f} min", flush=True)
        else:
            print(f"fold {i + 1}/{k}: {fold_dir / cv.OOF_FILE} exists: not trained again (delete {fold_dir} to redo)")
            fold_json = json.loads((fold_dir / "fold.json").read_text())
        if (fold_json.get("train_args"), fold_json.get("test_images")) != (train_args, sorted(test_rows["ImageId"])):
            sys.exit(f"bench: {fold_dir} holds a fold of another cross-validation (other --train-args, --folds or "
                     f"data); give another --out, or delete {fold_dir} to redo it")
        if fold_json.get("oof_flips", False) != model_flips(fold_dir):  # maps of a fold predicted the other way
            print(f"fold {i + 1}/{k}: its maps were predicted {'with' if fold_json.get('oof_flips') else 'without'} "
                  f"test-time flips, its model's config says otherwise: predicted again (not trained again)")
            fold_json = predict_fold(fold_dir, test_rows)
        maps.update(cv.load_maps(fold_dir / cv.OOF_FILE))
        problems += fold_json["problems"]
        summary = json.loads((fold_dir / "train_summary.json").read_text())
        timings.append({**{key: fold_json[key] for key in ("train_minutes_wall", "train_peak_memory_mib",
                                                         "oof_predict_seconds")},
                        "resumed": fold_json.get("resumed", False), "oof_flips": fold_json["oof_flips"],
                        **{key: summary.get(key) for key in ("epochs_logged", "epochs_planned", "ended_by",
                                                           "best_epoch", "train_minutes")}})
    metrics = cv.score_folds(maps, dict(zip(frame["ImageId"], frame["rle"])), dict(zip(frame["ImageId"], folds)))
    print("\n".join(cv.summary_lines(metrics)))
    has_ship = frame["n_ships"] > 0
    data_part = {"path": str(data), "images": len(frame), "ship_images": int(has_ship.sum()), "folds": k,
                 "fold_seed": seed, "fold_images": np.bincount(folds).tolist(),
                 "fold_ship_images": np.bincount(folds[has_ship.to_numpy()], minlength=k).tolist(),
                 "problems": problems}
    return {"data": data_part, "metrics": metrics,
            "timings": {"folds": timings, "train_minutes_wall": cv.spread([t["train_minutes_wall"] for t in timings])}}


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
    p.add_argument("--out", default="runs/airbus_bench", help="run folder (folds or split, models, outputs)")
    p.add_argument("--folds", type=int, default=5,
                   help="k-fold cross-validation, stratified ship / no ship, by image (each fold's training takes "
                        "train.py's time: ~25 min alone on 2 CPU cores); 0: the fixed 70/30 split, one training")
    p.add_argument("--json", default=str(HERE.parent / "benchmarks" / "airbus.json"),
                   help="the record to write (replaced)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="passed to train.py and test.py")
    p.add_argument("--train-args", default="",
                   help="extra train.py arguments, e.g. '--seed 1' to measure the seed spread or a variant on the same "
                        "folds (give --json another file: benchmarks/airbus.json records the default)")
    p.add_argument("--stop-after", type=int, default=0,
                   help="train at most this many folds, then stop without a record; the same command again goes on "
                        "with the folds left (trained folds are kept in --out); 0: all folds")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile; stored with the load")
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if args.folds == 1 or args.folds < 0:
        p.error(f"--folds must be 0 (the fixed split) or at least 2, got {args.folds}")
    if not (data / "masks.csv").is_file() or not (data / "images").is_dir():
        print(f"bench-ships: {data} holds no images/ + masks.csv; skipping (give DATA_ROOT=../shared/data)")
        return
    if is_demo(data):
        print(f"bench-ships: {data} is generated demo data; benchmarks need the real set; skipping")
        return
    load_start = os.getloadavg()
    command = " ".join(["python airbus_ships/bench.py", *(sys.argv[1:] if argv is None else argv)])
    if args.folds:
        result = run_folds(data, out, args.folds, args.train_args.split(), args.device, stop_after=args.stop_after)
        if result is None:
            return
        record = {"task": "airbus_ships", "what": CV_WHAT.format(k=args.folds), "command": command,
                  "config": json.loads((out / "fold0" / "model" / "config.json").read_text()),
                  "data": result["data"], "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                  "load": {"average_at_start": load_start, "average_at_end": os.getloadavg(), "note": args.note},
                  "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "metrics": result["metrics"],
                  "timings": result["timings"]}
        write_json(args.json, record)
        print(f"wrote {args.json}")
        return
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
    record = make_record(out, split, command, load, train_run, test_run)
    write_json(args.json, record)
    print(dumps_json({"kaggle_score": record["metrics"]["kaggle_score"],
                      "dice_ship_images_mean": record["metrics"]["dice_ship_images_mean"],
                      **{k: record["timings"][k] for k in ("train_minutes_wall", "test_images_per_second")}}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
