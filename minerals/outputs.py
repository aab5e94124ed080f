"""What a training run writes besides its checkpoints: CSV logs, the curves plot, the network graph."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

from common.io import atomic_path, atomic_write, save_figure
from minerals.config import CLASSES


def write_rows(path: Path, header: list[str], rows) -> None:
    """A CSV file of ``header`` and ``rows`` (lists), written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_split(path: Path, train_rows: list[dict], val_rows: list[dict]) -> None:
    """``split.csv``: every patch with its label, group and side of the split."""
    write_rows(path, ["patch", "label", "group", "split"],
               [(r["patch"], r["label"], r["group"], s) for s, rs in (("train", train_rows), ("val", val_rows))
                for r in rs])


def write_log(path: Path, history: list[dict]) -> None:
    """``log.csv``: one row per epoch."""
    header = list(history[-1])  # (a run resumed from an earlier version: its first rows lack the newer columns)
    write_rows(path, header, [[h.get(k, "") for k in header] for h in history])


def write_val_predictions(path: Path, val_rows: list[dict], probs) -> None:
    """``val_predictions.csv``: the validation patches with their class probabilities."""
    write_rows(path, ["patch", "label"] + [f"p_{c}" for c in CLASSES],
               [[r["patch"], r["label"]] + [f"{p:.5f}" for p in pr] for r, pr in zip(val_rows, probs)])


def plot_curves(history: list[dict], path: Path, dpi: int = 120) -> None:
    """Loss (training, validation) and validation accuracy / macro-F1 / open-set accuracy per epoch."""
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train (smoothed, weighted)")
    ax[0].set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax[1].set(xlabel="epoch", ylim=(0, 1), title="validation")
    if "val_loss" in history[-1]:  # (a run on every photo has no validation fold)
        ax[0].plot(ep, [h["val_loss"] for h in history], label="validation")
        ax[1].plot(ep, [h["val_accuracy"] for h in history], label="accuracy (7 minerals)")
        ax[1].plot(ep, [h["val_macro_f1"] for h in history], label="macro-F1 (7 minerals)")
        ax[1].plot(ep, [h["val_open_set_accuracy"] for h in history], label="open-set acc. (+negatives, at threshold)")
    else:
        ax[1].text(0.5, 0.5, "no validation: every photo trains", ha="center", transform=ax[1].transAxes)
    for a in ax:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    save_figure(fig, path, dpi=dpi)


def export_graph(model, backbone: str, img_size: int, out: Path) -> None:
    """The network graph as ONNX (``model.onnx``, opens in Netron) and a readable layer-by-layer summary
    (``model_summary.txt``)."""
    import torch

    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    x = torch.rand(1, 3, img_size, img_size)
    with atomic_path(out / "model.onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice (dynamo needs onnxscript)
        torch.onnx.export(model, (x,), tmp, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    lines, hooks = [], []

    def describe(name: str):
        def hook(module, inputs, output):
            lines.append(f"{name:<28} {type(module).__name__:<20} {tuple(output.shape)!s:<20} "
                         f"{sum(p.numel() for p in module.parameters()):>10,}")
        return hook

    for name, mod in model.named_modules():
        if name and name.count(".") <= 1:
            hooks.append(mod.register_forward_hook(describe(name)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    n = sum(p.numel() for p in model.parameters())
    text = (f"{backbone}: input (1, 3, {img_size}, {img_size}) float RGB in [0, 1] -> logits over "
            f"{CLASSES}\n{n:,} parameters\n\n{'module':<28} {'type':<20} {'output shape':<20} {'params':>10}\n"
            + "\n".join(lines) + "\n\nfull module tree:\n" + str(model) + "\n")
    with atomic_write(out / "model_summary.txt") as f:
        f.write(text)
