"""The README's figures, into ``minerals/docs/``: plots of numbers and pictures of synthetic demo photos only (the
real photos may not be redistributed, so no picture of one is drawn here).

    python -m minerals.figures --demo runs/minerals_demo --out minerals/docs            # make figures-minerals
    python -m minerals.figures --bench runs/minerals_bench --out minerals/docs          # (bench.py does this)

``--demo``: a demo-minerals folder (samples/ + scratch/ with eval/): ``demo_photos.png`` (demo photos with the
boxes the extractor found and its negative crops), ``demo_predictions.png`` (validation patches with their
answers), ``demo_curves.png``, ``demo_threshold.png``. ``--bench``: bench.py's run folder: ``bench_curves.png``
(fold-0 training curves of both defaults), ``bench_confusion.png`` (their fold-0 confusion matrices) and
``bench_threshold.png``; ``--record``: benchmarks/minerals.json: ``bench_folds.png`` (accuracy and macro-F1 of
every fold run against the brief's targets).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from common.config import HelpFormatter
from common.demo import is_demo
from common.io import read_rgb, save_figure
from minerals.config import CLASSES, MINERALS
from minerals.decision import decide
from minerals.evaluate import draw_reliability, plot_threshold
from minerals.outputs import plot_curves

DPI = 80  # small PNGs for the README


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def history(run: Path) -> list[dict]:
    """A run's log.csv as numbers."""
    return [{k: float(v) for k, v in r.items()} for r in read_rows(run / "log.csv")]


def demo_photos(samples: Path, photos_root: Path, path: Path, n: int = 7) -> None:
    """One demo photo per class with its positive box (green) and negative crops (red), from index.csv."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = read_rows(samples / "index.csv")
    firsts = {}
    for r in rows:
        if r["kind"] == "positive":
            firsts.setdefault(r["label"], r["source"])
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.2), squeeze=False)
    for ax, (label, source) in zip(axes[0], sorted(firsts.items())[:n]):
        ax.imshow(read_rgb(photos_root / source))
        for r in (r for r in rows if r["source"] == source):
            x0, y0, x1, y1 = (int(r[k]) for k in ("x0", "y0", "x1", "y1"))
            colour = "lime" if r["kind"] == "positive" else "red"
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, lw=1.5))
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle("demo photos (synthetic): specimen box found (green), negative crop (red)", fontsize=10)
    save_figure(fig, path, dpi=DPI)


def demo_predictions(run: Path, samples: Path, path: Path, n: int = 12, cols: int = 6) -> None:
    """Validation patches of the demo run with the answer of best.pt (green: right, red: wrong)."""
    import matplotlib.pyplot as plt

    preds = read_rows(run / "val_predictions.csv")
    threshold = json.loads((run / "result.json").read_text())["threshold"]
    picked = [preds[i] for i in np.linspace(0, len(preds) - 1, min(n, len(preds))).astype(int)]
    rows = -(-len(picked) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols, 1.65 * rows + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), picked):
        conf, res = decide(np.array([[float(r[f"p_{c}"]) for c in CLASSES]]), threshold)
        truth = r["label"] if r["label"] in MINERALS else "unknown"
        ax.imshow(read_rgb(samples / "patches" / r["patch"]))
        ax.set_title(f"{res[0]} {conf[0]:.2f}\n(true: {r['label']})", fontsize=7,
                     color="green" if res[0] == truth else "red")
    fig.suptitle(f"demo validation patches: answer and confidence at threshold {threshold:.2f}", fontsize=10)
    save_figure(fig, path, dpi=DPI)


def demo_figures(demo: Path, photos_root: Path, out: Path) -> None:
    """The demo run's figures; pictures of patches and photos only when they are generated demo data."""
    run = demo / "scratch"
    out.mkdir(parents=True, exist_ok=True)
    if is_demo(photos_root):
        demo_photos(demo / "samples", photos_root, out / "demo_photos.png")
        demo_predictions(run, demo / "samples", out / "demo_predictions.png")
    else:  # real photos may not be redistributed: no picture of them goes into the repository
        print(f"{photos_root} is not generated demo data: no pictures of its photos drawn", file=sys.stderr)
    plot_curves(history(run), out / "demo_curves.png", dpi=DPI)
    m = json.loads((run / "eval" / "metrics.json").read_text())
    plot_threshold(m["threshold_curve"], m["threshold"], out / "demo_threshold.png", dpi=DPI)


def bench_figures(runs: Path, out: Path, reliability: bool = True) -> None:
    """Fold-0 curves, confusion matrices, the threshold curve and (``reliability``) the reliability diagrams of
    bench.py's runs (numbers only)."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    names = [n for n in ("scratch", "transfer") if (runs / n / "eval" / "metrics.json").exists()]
    if not names:
        return
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        h = history(runs / name)
        for key, label in (("val_accuracy", "accuracy"), ("val_macro_f1", "macro-F1"),
                           ("val_open_set_accuracy", "open-set accuracy")):
            ax.plot([r["epoch"] for r in h], [r[key] for r in h], label=label)
        ax.set(title=f"{name}: validation fold 0", xlabel="epoch", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, out / "bench_curves.png", dpi=DPI)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        c = json.loads((runs / name / "eval" / "metrics.json").read_text())["closed_set"]
        ConfusionMatrixDisplay(np.asarray(c["confusion_matrix"]), display_labels=MINERALS).plot(
            ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45)
        ax.set_title(f"{name}, fold 0 (accuracy {c['accuracy']:.3f})")
    save_figure(fig, out / "bench_confusion.png", dpi=DPI)
    m = json.loads((runs / names[-1] / "eval" / "metrics.json").read_text())
    plot_threshold(m["threshold_curve"], m["threshold"], out / "bench_threshold.png", dpi=DPI)
    if reliability:
        reliability_figure(runs, names, out / "bench_reliability.png")


def reliability_panels(panels: list[tuple[dict, str, str]], path: Path) -> None:
    """Reliability diagrams side by side, one per ``(reliability table, legend label, title)``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, (rel, label, title) in zip(axes[0], panels):
        draw_reliability(ax, rel, label, title)
    save_figure(fig, path, dpi=DPI)


def reliability_figure(runs: Path, names: list[str], path: Path) -> None:
    """Reliability diagrams of the fold-0 runs ``names`` (their eval/metrics.json), side by side."""
    metrics = {name: json.loads((runs / name / "eval" / "metrics.json").read_text()) for name in names}
    reliability_panels([(m["reliability"], f"T = {m['temperature']:.2f}",
                         f"{name}, fold 0: ECE {m['ece']:.3f} (numbers: patches)") for name, m in metrics.items()],
                       path)


def oof_reliability_figure(record: dict, path: Path) -> None:
    """Reliability diagrams of the pooled out-of-fold predictions of each model in ``record`` (its
    ``calibration_out_of_fold``: every fold's last epoch on its own validation patches, one temperature)."""
    fits = {n: m["calibration_out_of_fold"] for n, m in record["metrics"].items() if "calibration_out_of_fold" in m}
    if fits:
        reliability_panels([(c["reliability"], f"T = {c['temperature']:.2f}",
                             f"{name}, {len(c['per_fold_last_epoch_temperature'])} folds pooled, last epochs\n"
                             f"ECE {c['ece']:.3f} (cross-fitted {c['ece_cross_fitted']:.3f}; numbers: patches)")
                            for name, c in fits.items()], path)


def folds_figure(record: dict, path: Path) -> None:
    """Accuracy and macro-F1 of every fold run of each model in ``record`` (benchmarks/minerals.json: both
    defaults; bench.py --models: the models it ran) against the targets."""
    import matplotlib.pyplot as plt

    names = list(record["metrics"])
    width = 0.76 / len(names)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, metric in zip(axes, ("accuracy", "macro_f1")):
        for k, (name, m) in enumerate((n, record["metrics"][n]) for n in names):
            folds = sorted(m["per_fold"], key=int)
            x = np.arange(len(folds)) + (k - (len(names) - 1) / 2) * width
            ax.bar(x, [m["per_fold"][f][metric] for f in folds], width, label=f"{name} (mean {m['mean'][metric]:.3f})",
                   color=f"C{k}")
            if metric in m["target"]:
                ax.axhline(m["target"][metric], color=f"C{k}", ls="--", lw=1)
        ax.set(xticks=range(len(folds)), xticklabels=[f"fold {f}" for f in folds], ylim=(0.6, 1.0),
               title=f"{'accuracy' if metric == 'accuracy' else 'macro-F1'} per validation fold (dashed: target)")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path, dpi=DPI)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--demo", default=None, help="a demo-minerals folder (samples/, scratch/ with eval/)")
    p.add_argument("--photos", default="data/minerals", help="the demo photos the demo samples came from")
    p.add_argument("--bench", default=None, help="bench.py's run folder (scratch/, transfer/ with eval/)")
    p.add_argument("--record", default=None, help="a benchmarks/minerals.json record")
    p.add_argument("--out", default="minerals/docs", help="where the PNGs go")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.demo:
        demo_figures(Path(args.demo), Path(args.photos), out)
    if args.bench:
        bench_figures(Path(args.bench), out)
    if args.record:
        folds_figure(json.loads(Path(args.record).read_text()), out / "bench_folds.png")


if __name__ == "__main__":
    main()
