"""Check that the training pipeline streams: a Kaggle-sized mask table, bounded memory, enough batches/s.

    python -m airbus_ships.studies.stream_check --data data/airbus --rows 200000 --out runs/airbus_stream

Writes a synthetic mask CSV of ``--rows`` rows with Kaggle's class balance (78% of images without ships;
ship images hold 1-15 ships, 1.9 on average) whose ship RLE strings are copied from real-format rows of
``--data``'s mask table (ships of one image never overlap), and an image folder of symbolic links pointing at
its handful of images (both in a temporary folder, deleted at the end). Then it reads the table with the
training code (checks included), builds the training ``tf.data`` pipeline and measures: peak resident memory,
batches/s delivered by the pipeline, and batches/s the model consumes (``train_on_batch`` of a scratch U-Net of
widths 8-128 on the same batch size). Prints the result and writes ``--out/stream_check.json``.
"""
from __future__ import annotations

import argparse
import csv
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from airbus_ships import quiet_tensorflow
from common.config import HelpFormatter

KAGGLE_EMPTY_SHARE = 150_000 / 192_556  # images without ships in train_v2
SHIPS_PER_SHIP_IMAGE = np.array([27104, 7674, 2954, 1622, 925, 657, 406, 318, 243, 168, 144, 124, 75, 76, 66],
                                float)  # Kaggle train_v2: images with 1, 2, ..., 15 ships


def write_synthetic(images: Path, out: Path, rows: int, seed: int = 0) -> tuple[Path, Path]:
    """Synthetic ``out/masks.csv`` with ``rows`` rows and ``out/images/`` of links to the images in ``images``.

    The ships of one synthetic image are distinct source rows that do not overlap each other (the training
    code drops an image whose ships overlap); an image with more ships than that allows gets fewer.
    """
    from airbus_ships.data import overlapping_rows
    rng = np.random.default_rng(seed)
    sources = sorted(p for p in images.iterdir() if p.suffix.lower() == ".jpg")
    demo_rles = []
    demo_csv = images.parent / "masks.csv"
    if demo_csv.exists():
        with open(demo_csv, newline="") as f:
            demo_rles = [r[1] for r in list(csv.reader(f))[1:] if len(r) > 1 and r[1]]
    if not demo_rles:
        demo_rles = ["1000 5 1768 5 2536 5"]
    clash = np.array([[i != j and overlapping_rows([a, b]) is not None for j, b in enumerate(demo_rles)]
                      for i, a in enumerate(demo_rles)], bool).reshape(len(demo_rles), len(demo_rles))
    p_ships = SHIPS_PER_SHIP_IMAGE / SHIPS_PER_SHIP_IMAGE.sum()
    (out / "images").mkdir(parents=True, exist_ok=True)
    written, i = 0, 0
    with open(out / "masks.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "EncodedPixels"])
        while written < rows:
            image_id = f"{i:09x}.jpg"
            os.symlink(sources[i % len(sources)].resolve(), out / "images" / image_id)
            n = 0 if rng.random() < KAGGLE_EMPTY_SHARE else int(rng.choice(15, p=p_ships)) + 1
            n = min(n, rows - written) if n else 0
            if n == 0:
                w.writerow([image_id, ""])
                written += 1
            else:
                chosen = []
                for r in rng.permutation(len(demo_rles)):
                    if not clash[r, chosen].any():
                        chosen.append(r)
                        if len(chosen) == n:
                            break
                for r in chosen:
                    w.writerow([image_id, demo_rles[r]])
                written += len(chosen)
            i += 1
    return out / "images", out / "masks.csv"


class PeakMemory:
    """Samples this process's resident memory in a thread; ``peak_mib`` is the highest value seen."""

    def __init__(self, every: float = 0.05):
        self.peak, self.every, self._stop = 0, every, threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return max(self.peak, self._proc.memory_info().rss) / 2 ** 20


def measure(images: Path, csv_path: Path, batches: int, batch_size: int, train_steps: int, seed: int = 0) -> dict:
    from airbus_ships.data import read_mask_table
    from airbus_ships.losses import bce_dice_loss
    from airbus_ships.model import build_unet
    from airbus_ships.pipeline import make_dataset

    result = {}
    with PeakMemory() as mem:
        t0 = time.time()
        table = read_mask_table(csv_path, images)
        result["table_seconds"] = time.time() - t0
        result["images"] = len(table.frame)
        result["ship_images"] = int((table.frame.n_ships > 0).sum())
        result["rows_dropped"] = len(table.problems)
        ds = make_dataset(table.frame, batch_size, training=True, seed=seed)
        it = iter(ds)
        next(it)  # start-up (graph building, first fills) not timed
        t0 = time.time()
        for _ in range(batches):
            x, y = next(it)
        result["pipeline_batches_per_second"] = batches / (time.time() - t0)
        result["peak_rss_mib_pipeline"] = mem.peak_mib
        if train_steps:
            model = build_unet((8, 16, 32, 64, 128))
            model.compile(optimizer="adam", loss=bce_dice_loss)
            model.train_on_batch(x, y)  # tracing
            t0 = time.time()
            for _ in range(train_steps):
                model.train_on_batch(x, y)
            result["training_batches_per_second"] = train_steps / (time.time() - t0)
    result["peak_rss_mib_with_training"] = mem.peak_mib
    result["load_average"] = os.getloadavg()
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data", default="data/airbus", help="a Kaggle-layout folder (e.g. the demo data) whose few "
                                                         "images the rows point at and whose ship rows they copy")
    p.add_argument("--out", default="runs/airbus_stream", help="folder for stream_check.json")
    p.add_argument("--rows", type=int, default=200_000, help="rows of the synthetic mask CSV")
    p.add_argument("--batches", type=int, default=100, help="pipeline batches to time")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=10, help="training steps to time (0: skip)")
    p.add_argument("--seed", type=int, default=0, help="synthetic table and pipeline sampling")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="for the training steps: cpu hides the GPUs; cuda stops when TensorFlow sees none")
    p.add_argument("--threads", type=int, default=0, help="TensorFlow intra- and inter-op threads (0: its choice)")
    args = p.parse_args(argv)
    quiet_tensorflow()
    from airbus_ships.data import find_layout
    from airbus_ships.runtime import setup_device
    from common.io import write_json
    setup_device(args.device, args.threads)
    images_dir, _ = find_layout(args.data)
    with tempfile.TemporaryDirectory(prefix="airbus_stream_") as tmp:
        images, csv_path = write_synthetic(images_dir, Path(tmp), args.rows, args.seed)
        result = {"rows": args.rows, "batch_size": args.batch_size, "seed": args.seed,
                  **measure(images, csv_path, args.batches, args.batch_size, args.train_steps, args.seed)}
    for k, v in result.items():
        print(f"{k}: {v}")
    print(f"wrote {write_json(Path(args.out) / 'stream_check.json', result)}")


if __name__ == "__main__":
    main()
