"""The README's figures, into wood_anomaly/docs/ (make figures-wood, after make demo-wood).

    python wood_anomaly/figures.py --data data/wood --pred runs/wood_demo/pred --out wood_anomaly/docs

``examples.png``: photo, heatmap, overlay and the predicted mask against the planted defects, for three demo
photos. ``demo_scores.png``: the pixel scores of defect and clean pixels of every demo photo, in training
spreads, against the label-free threshold. ``real_photo_scores.png``: the 7 real photos' scores and labels
from benchmarks/wood.json (numbers only: the wood photos themselves may not be redistributed). Pictures are
drawn of generated demo photos only: a folder without the demo marker is refused.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from common.config import HelpFormatter
from common.demo import is_demo
from common.io import read_mask, read_rgb
from wood_anomaly.config import image_folder

if TYPE_CHECKING:  # matplotlib is imported by the functions that draw, after the options are parsed
    from matplotlib.figure import Figure

DPI = 80


def save(fig: Figure, path: Path) -> None:
    """The figure as a PNG of at most 256 colours (photos in PNG are large; the figures stay under ~150 KB)."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI)
    Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)


def load(data: Path, pred: Path) -> list[dict]:
    """Every predicted demo photo: its stem, row, image, map (training spreads), overlay, predicted and true mask."""
    with open(pred / "predictions.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    out = []
    for r in rows:
        stem = Path(r["image"]).stem
        out.append({"stem": stem, "row": r, "image": read_rgb(image_folder(data) / r["image"]),
                    "map": np.load(pred / stem / "anomaly_map.npy").astype(np.float32),
                    "overlay": read_rgb(pred / stem / "overlay.jpg"),
                    "pred": read_mask(pred / stem / "preds.png", {0: 0}, default=1).astype(bool),
                    "true": read_mask(data / "masks" / "consensus" / f"{stem}.png", {0: 0}, default=1).astype(bool)})
    return out


def examples(photos: list[dict], threshold: float, path: Path) -> None:
    """Rows: two photos with defects and one clean; columns: photo, heatmap, overlay, mask vs truth."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    defective = [p for p in photos if p["true"].any()][:2]
    shown = defective + [p for p in photos if not p["true"].any()][:3 - len(defective)]
    fig = Figure(figsize=(10, 2.0 * len(shown)))
    axes = fig.subplots(len(shown), 4, squeeze=False)
    for ax, p in zip(axes, shown):
        agree = np.zeros((*p["pred"].shape, 3), np.uint8)
        agree[p["pred"] & p["true"]] = (255, 255, 255)  # found
        agree[p["pred"] & ~p["true"]] = (255, 60, 60)  # false alarm
        agree[~p["pred"] & p["true"]] = (60, 140, 255)  # missed
        panels = [(p["image"], f"{p['stem']}: {p['row']['label']} (score {float(p['row']['score']):.2f})"),
                  (p["map"], "anomaly map (own range; threshold contour)"),
                  (p["overlay"], "overlay, mask outline in cyan"),
                  (agree, "white found, red false alarm, blue missed")]
        lo, hi = np.percentile(p["map"], [1, 99.9])  # the photo's own range, as predict.colorize
        for a, (img, title) in zip(ax, panels):
            a.imshow(img, **({"cmap": "inferno", "vmin": lo, "vmax": max(hi, threshold)} if img.ndim == 2 else {}))
            if img.ndim == 2:
                a.contour(p["map"] > threshold, levels=[0.5], colors="cyan", linewidths=0.8)
            a.set_title(title, fontsize=7)
            a.axis("off")
    fig.tight_layout()
    save(fig, path)


def demo_scores(photos: list[dict], threshold: float, path: Path) -> None:
    """Histogram of the pixel scores of planted-defect and clean pixels, with the label-free threshold."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    defect = np.concatenate([p["map"][p["true"]] for p in photos])
    clean = np.concatenate([p["map"][~p["true"]] for p in photos])
    bins = np.linspace(min(defect.min(), clean.min()), max(defect.max(), clean.max()), 80)
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    ax.hist(clean, bins, color="tab:green", alpha=0.6, label=f"clean pixels ({clean.size:,})")
    ax.hist(defect, bins, color="tab:red", alpha=0.6, label=f"planted-defect pixels ({defect.size:,})")
    ax.axvline(threshold, color="k", ls="--", label=f"label-free threshold, fitted ({threshold:.2f} training spreads)")
    ax.set(yscale="log", xlabel="pixel score (training spreads above the median)", ylabel="pixels",
           title="Demo photos: pixel scores of the fused map")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


def real_photo_scores(bench_json: Path, path: Path) -> bool:
    """Bar chart of the real photos' scores (max / threshold) and labels from the benchmark record."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    if not bench_json.is_file():
        return False
    image = json.loads(bench_json.read_text())["metrics"]["image"]
    stems = list(image["scores"])
    scores = [image["scores"][s] for s in stems]
    colours = ["tab:red" if image["labels"][s] == "anomalous" else "tab:green" for s in stems]
    fig = Figure(figsize=(7, 3))
    ax = fig.subplots()
    ax.bar([s.rsplit("_", 1)[-1] for s in stems], scores, color=colours)
    ax.axhline(1.0, color="k", ls="--", label="threshold (score 1): red anomalous, green normal")
    ax.set(xlabel="real photo (last digits of its name)", ylabel="photo score (max / threshold)",
           ylim=(0, 1.3 * max(scores)),
           title=f"The 7 real photos (benchmarks/wood.json), image AUROC {image['image_auroc_majority']:.2f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
    return True


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data", default="data/wood", help="generated demo photos (make demo-data-wood)")
    p.add_argument("--pred", default="runs/wood_demo/pred", help="predict.py's outputs on them (make demo-wood)")
    p.add_argument("--bench", default="benchmarks/wood.json", help="benchmark record for the real photos' scores")
    p.add_argument("--out", default="wood_anomaly/docs", help="folder of the PNGs")
    args = p.parse_args(argv)
    data, pred, out = Path(args.data), Path(args.pred), Path(args.out)
    if not is_demo(data):
        sys.exit(f"--data {data}: not generated demo data; pictures of the real wood photos may not be committed")
    if not (pred / "predictions.csv").is_file():
        sys.exit(f"--pred {pred}: no predictions.csv; run make demo-wood first")
    threshold = float(json.loads((pred.parent / "config.json").read_text())["threshold"])
    photos = load(data, pred)
    out.mkdir(parents=True, exist_ok=True)
    examples(photos, threshold, out / "examples.png")
    demo_scores(photos, threshold, out / "demo_scores.png")
    written = ["examples.png", "demo_scores.png"]
    if real_photo_scores(Path(args.bench), out / "real_photo_scores.png"):
        written.append("real_photo_scores.png")
    print(f"{', '.join(written)} -> {out}")


if __name__ == "__main__":
    main()
