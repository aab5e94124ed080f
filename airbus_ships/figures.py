"""The README's figures: training curves and example predictions of a run, ships found by size in the benchmark.

    python -m airbus_ships.figures --run runs/airbus_figures --bench benchmarks/airbus.json --out airbus_ships/docs

(``make figures-ships`` trains a short run on the synthetic demo data first.) Writes into ``--out``:

* ``training_curves.png``: loss, dice and IoU per epoch of ``RUN/train_log.csv`` (train.py draws the same plot
  into every run folder);
* ``examples.png``: the overlays ``test.py`` wrote into ``RUN/test/result-image/`` (predicted ships red, true
  outlines green), side by side, each with a full-resolution window around its ships;
* ``ships_by_size.png``: from the benchmark record, the test split's true ships per size and how many were found
  at IoU > 0.5 (numbers only: no Kaggle image is drawn).

matplotlib, pandas, scipy and Pillow only (no TensorFlow).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common.io import atomic_path, read_rgb, save_figure


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(log_csv: Path, out_png: Path) -> None:
    """Loss, dice and IoU per epoch (train and validation) of a Keras CSV log."""
    plt = _pyplot()
    import pandas as pd

    log = pd.read_csv(log_csv)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes, ("loss", "dice_coef", "iou_coef")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in log:
                ax.plot(log["epoch"] + 1, log[prefix + key], style, marker=".", label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    save_figure(fig, out_png, dpi=100)


def outlines(overlay: np.ndarray) -> np.ndarray:
    """Where an overlay has its green true-ship outlines (JPEG-blurred, so by hue, not by exact colour)."""
    rgb = overlay.astype(int)
    return (rgb[..., 1] > 110) & (rgb[..., 1] > rgb[..., 0] + 15) & (rgb[..., 1] > rgb[..., 2] + 40)


def ship_window(overlay: np.ndarray, side: int = 160) -> tuple[int, int]:
    """Top-left corner of a ``side`` x ``side`` window around the largest patch of an overlay's red (predicted)
    or green (true outline) pixels; the image's centre when there is none."""
    from scipy import ndimage

    rgb = overlay.astype(int)
    marked = ((rgb[..., 0] > rgb[..., 1] + 60) & (rgb[..., 0] > rgb[..., 2] + 60)) | outlines(overlay)
    labels, n = ndimage.label(ndimage.binary_dilation(marked, iterations=3))
    h, w = marked.shape
    cy, cx = h // 2, w // 2
    if n:
        largest = 1 + int(np.argmax(ndimage.sum_labels(marked, labels, range(1, n + 1))))
        cy, cx = (int(v) for v in ndimage.center_of_mass(labels == largest))
    return min(max(cy - side // 2, 0), h - side), min(max(cx - side // 2, 0), w - side)


def plot_examples(overlays: list[Path], out_png: Path, side: int = 160) -> None:
    """Each overlay whole (top) and a full-resolution ``side`` px window around its ships (bottom)."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    fig, axes = plt.subplots(2, len(overlays), figsize=(2.6 * len(overlays), 5.6), squeeze=False)
    for k, path in enumerate(overlays):
        image = read_rgb(path)
        y0, x0 = ship_window(image, side)
        axes[0, k].imshow(image[::2, ::2])
        axes[0, k].add_patch(Rectangle((x0 / 2, y0 / 2), side / 2, side / 2, fill=False, color="yellow", lw=1))
        axes[0, k].set_title(path.stem, fontsize=9)
        crop = image[y0:y0 + side, x0:x0 + side].copy()
        crop[outlines(crop)] = (0, 255, 0)  # pure green: survives the PNG palette (small_png)
        axes[1, k].imshow(crop, interpolation="nearest")
        for ax in axes[:, k]:
            ax.axis("off")
    fig.suptitle("predicted ships red, true outlines green (synthetic demo images; below: the yellow box)",
                 fontsize=9)
    save_figure(fig, out_png, dpi=80)
    small_png(out_png)


def small_png(path: Path, colors: int = 120) -> None:
    """Rewrite a PNG of photographic content with a palette of ``colors`` plus pure green, yellow, white and
    black, so that thin outlines keep their colour (about half the bytes)."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
    palette = rgb.quantize(colors).getpalette()[:3 * colors] + [0, 255, 0, 255, 255, 0, 255, 255, 255, 0, 0, 0]
    holder = Image.new("P", (1, 1))
    holder.putpalette(palette + [0] * (768 - len(palette)))
    with atomic_path(path) as tmp:
        rgb.quantize(palette=holder, dither=Image.Dither.NONE).save(tmp, format="PNG", optimize=True)


def plot_ships_by_size(record: dict, out_png: Path) -> None:
    """Bars of the true ships per size bin and those found at IoU > 0.5 (``metrics.ships_by_size``; of a
    cross-validation record, all out-of-fold images)."""
    plt = _pyplot()
    metrics = record["metrics"]
    if "pooled" in metrics:  # bench.py --folds K: every image, scored by the model that did not train on it
        rows, score = metrics["pooled"]["ships_by_size"], metrics["over_folds"]["kaggle_score"]["mean"]
        what = f"{len(metrics['folds'])}-fold cross-validation, all images"
    else:
        rows, score, what = metrics["ships_by_size"], metrics["kaggle_score"], "benchmark test split"
    labels = [r["pixels"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.bar(x, [r["ships"] for r in rows], color="0.8", label="true ships")
    ax.bar(x, [r["found_iou_0.5"] for r in rows], color="tab:blue", label="found (IoU > 0.5)")
    ax.set_xticks(list(x), labels)
    ax.set_xlabel("true ship area (pixels)")
    ax.set_ylabel("ships")
    ax.set_title(f"{what}: ships found by size (Kaggle score {score:.3f})", fontsize=10)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, out_png, dpi=90)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a train.py run folder with test.py's output in RUN/test")
    p.add_argument("--bench", default="", help="a bench.py record (benchmarks/airbus.json) for ships_by_size.png")
    p.add_argument("--out", default="airbus_ships/docs", help="folder for the PNGs")
    args = p.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    log = run / "train_log.csv"
    overlays = sorted((run / "test" / "result-image").glob("*.jpg"))[:3]
    if not log.is_file() or not overlays:
        sys.exit(f"{run}: needs train_log.csv (train.py --out {run}) and test/result-image/*.jpg (test.py --out "
                 f"{run / 'test'})")
    plot_curves(log, out / "training_curves.png")
    plot_examples(overlays, out / "examples.png")
    written = ["training_curves.png", "examples.png"]
    if args.bench:
        plot_ships_by_size(json.loads(Path(args.bench).read_text()), out / "ships_by_size.png")
        written.append("ships_by_size.png")
    print(f"wrote {', '.join(written)} into {out}")


if __name__ == "__main__":
    main()
