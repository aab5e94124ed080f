"""Figures of a training run: its loss curve and an example prediction, small enough to commit.

    python -m fcnn_rgb_gt.figures --run runs/fcnn_demo --data data/fcnn/extra/demo_val --name demo

writes ``<out>/<name>_loss_vs_epochs.png`` (the run's train / validation loss and validation IoU per epoch, from
its ``last.pt``) and ``<out>/<name>_prediction.png`` (a crop of the pair in ``--data``: the image with hits red,
false alarms yellow and misses blue, beside the building probability). ``make figures-fcnn`` runs it on the
demo run; ``bench.py`` writes the same two figures of the real-data run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common.io import read_rgb, save_figure
from fcnn_rgb_gt.config import DOCS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(path: Path, history: list[dict], dpi: int = 110) -> Path:
    """Train and validation loss per epoch, with the validation building IoU at 0.5 on a second axis."""
    ep = [h["epoch"] for h in history]
    fig, ax = _plt().subplots(figsize=(7, 4.2))
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss (augmented crops)")
    ax.plot(ep, [h["val_loss"] for h in history], "s-", label="validation loss (held-out strip, same loss)")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(ep, [h["val_iou"] for h in history], "g--", alpha=0.6, label="validation building IoU (at 0.5)")
    ax2.set_ylabel("IoU")
    ax2.set_ylim(0, 1)
    lines, lines2 = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
    ax.set_title("FCN training: loss vs epochs")
    return save_figure(fig, path, dpi=dpi)


def busiest_crop(mask: np.ndarray, side: int) -> tuple[slice, slice]:
    """The ``side`` x ``side`` window (on a grid of half-side steps) holding the most building pixels."""
    h, w = mask.shape
    side = min(side, h, w)
    step = max(1, side // 2)
    best = max((int(mask[y:y + side, x:x + side].sum()), y, x)
               for y in range(0, h - side + 1, step) for x in range(0, w - side + 1, step))
    return slice(best[1], best[1] + side), slice(best[2], best[2] + side)


def plot_prediction(path: Path, image: np.ndarray, gt: np.ndarray, prob: np.ndarray, title: str,
                    side: int = 480, pred: np.ndarray | None = None) -> Path:
    """A crop of ``image``: the predicted mask ``pred`` (default: probability >= 0.5) against ``gt`` (red hit,
    yellow false alarm, blue miss), and the building probability. Saved with a 256-colour palette to stay small."""
    from PIL import Image

    from fcnn_rgb_gt.predict import overlay

    ys, xs = busiest_crop(gt, side)
    pred = (prob >= 0.5 if pred is None else pred)[ys, xs]
    fig, axes = _plt().subplots(1, 2, figsize=(8, 4.3))
    axes[0].imshow(overlay(image[ys, xs], pred, gt[ys, xs]))
    axes[0].set_title("red hit, yellow false alarm, blue miss", fontsize=9)
    axes[1].imshow(prob[ys, xs], cmap="magma", vmin=0, vmax=1)
    axes[1].set_title("building probability", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=80)
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    return path


def run_figures(run: Path, pair: Path, out: Path, name: str, title: str = "") -> list[Path]:
    """The loss curve of the whole run (``last.pt``) and the prediction of its ``best.pt`` (predict.py's mask) on
    the pair folder ``pair`` (rgb.png + gt.png)."""
    import torch

    from fcnn_rgb_gt.config import CLEAN_RADIUS, MAX_SHARE
    from fcnn_rgb_gt.data import read_gt
    from fcnn_rgb_gt.infer import decide, load_checkpoint, predict_probs, read_checkpoint

    last = read_checkpoint(run / "last.pt", keys=("history",))
    curve = plot_losses(out / f"{name}_loss_vs_epochs.png", last["history"], dpi=80)
    model, ckpt = load_checkpoint(run / "best.pt", torch.device("cpu"))
    image = read_rgb(pair / "rgb.png")
    gt = read_gt(pair / "gt.png", image.shape[:2], pair / "rgb.png").astype(bool)
    prob = predict_probs(model, image)
    pred, _ = decide(prob, float(ckpt.get("threshold", 0.5)), CLEAN_RADIUS,  # predict.py's mask
                     ckpt.get("input_stats", {}).get("building_share", 0.0), MAX_SHARE)
    panel = plot_prediction(out / f"{name}_prediction.png", image, gt, prob, title or f"{pair.name}, {run.name}",
                            pred=pred)
    return [curve, panel]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a train.py output folder (its best.pt)")
    p.add_argument("--data", required=True, help="a folder holding rgb.png and gt.png to predict")
    p.add_argument("--out", default=str(DOCS), help="where the PNG files go")
    p.add_argument("--name", default="demo", help="file name prefix")
    args = p.parse_args(argv)
    for path in run_figures(Path(args.run), Path(args.data), Path(args.out), args.name):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
