"""Measure a trained classifier on labelled patches: accuracy, macro-F1, per-class P/R/F1, confusion matrix,
and accuracy / coverage against the confidence threshold.

    python minerals/evaluate.py --checkpoint runs/minerals/train/best.pt --data runs/minerals/samples \
        [--split val] --out runs/minerals/eval

Labelled patches are either an extracted-samples folder (``index.csv``; ``--split val`` keeps the validation
patches of the run's ``split.csv``) or a folder of ``<class>/<patch>`` sub-folders (``negative/`` for
non-minerals). Writes ``metrics.json``, ``confusion_matrix.png``, ``threshold_curve.png`` and, for looking at
what goes wrong, ``errors.csv`` (every mineral patch whose most likely mineral is not its label, the most
confident mistakes first) with ``errors.png`` (a thumbnail sheet of the first of them).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

from common.io import IMAGE_EXTENSIONS, atomic_write, save_figure, write_json
from common.metrics import classification_summary
from minerals.data import CLASSES, MINERALS, NEGATIVE, read_index
from minerals.decision import UNKNOWN, decide, mineral_confidence, mineral_metrics, threshold_curve
from minerals.predict import load_classifier, option_problems, predict_probs
from minerals.runtime import DEVICES, pick_device


def labelled_patches(data: Path, split_csv: Path | None = None, split: str = "all") -> list[tuple[Path, str]]:
    """``(file, label)`` pairs from an index.csv folder (optionally one split of a run) or class folders."""
    if (data / "index.csv").exists():
        rows = read_index(data)
        if split != "all":
            if split_csv is None or not split_csv.exists():
                raise SystemExit(f"--split {split}: the run's split.csv was not found ({split_csv})")
            with open(split_csv, newline="") as f:
                keep = {r["patch"] for r in csv.DictReader(f) if r.get("split") == split}
            rows = [r for r in rows if r["patch"] in keep]
            if len(rows) < len(keep):  # the samples were extracted again (other photos) since the run
                lost = (f"{len(keep) - len(rows)} of the {len(keep)} {split} patches of {split_csv} are not in "
                        f"{data}/index.csv")
                if not rows:
                    raise SystemExit(f"error: {lost}: evaluate the samples the run was trained on (or --split all)")
                print(f"warning: {lost}; scoring the {len(rows)} found", file=sys.stderr)
        return [(Path(r["file"]), r["label"]) for r in rows]
    pairs = []
    ignored = sorted(d.name for d in data.iterdir() if d.is_dir() and d.name not in CLASSES) if data.is_dir() else []
    if ignored:  # a misspelt or extra label folder would otherwise drop out of the figures unsaid
        print(f"warning: {data}: folders {ignored} are not among {CLASSES}; not evaluated", file=sys.stderr)
    for c in CLASSES:
        if (data / c).is_dir():
            pairs += [(f, c) for f in sorted((data / c).iterdir()) if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not pairs:
        raise SystemExit(f"{data}: neither index.csv nor <class>/ folders of patches")
    return pairs


def summarise(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """All metrics of one evaluation; ``probs`` (N, 8) softmax, ``labels`` (N,) indices into CLASSES."""
    pos = labels < len(MINERALS)
    closed = mineral_metrics(probs, labels) if pos.any() else None  # None: negatives only (a rejection test)
    _, results = decide(probs, threshold)
    truth = [CLASSES[i] if i < len(MINERALS) else UNKNOWN for i in labels]
    open_set = classification_summary(truth, results, MINERALS + [UNKNOWN])
    curve = threshold_curve(probs, labels)
    return {"n_patches": int(len(labels)), "n_mineral_patches": int(pos.sum()), "threshold": threshold,
            "closed_set": closed,  # the most likely mineral, mineral patches only (the usual dataset metric)
            "open_set": open_set,  # with the threshold: negatives must come out "unknown"
            "coverage_at_threshold": float(np.mean([r != UNKNOWN for r, p in zip(results, pos) if p]))
            if pos.any() else float("nan"),
            "threshold_curve": curve}


def misclassified(files: list, probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Closed-set mistakes, the most confident first: one dict per mineral patch whose most likely mineral is
    not its label. ``probs`` (N, 8) softmax, ``labels`` (N,) indices into CLASSES, ``files`` N paths."""
    conf, pred = mineral_confidence(probs)
    rows = [{"file": str(f), "label": CLASSES[y], "predicted": MINERALS[k], "confidence": round(float(c), 4),
             "p_label": round(float(pr[y]), 4)}
            for f, pr, y, c, k in zip(files, probs, labels, conf, pred) if y < len(MINERALS) and k != y]
    return sorted(rows, key=lambda r: -r["confidence"])


def plot_errors(errors: list[dict], path: Path, max_n: int = 36, cols: int = 6) -> None:
    """Thumbnail sheet of the first ``max_n`` mistakes, captioned "true -> predicted (confidence)"."""
    import matplotlib.pyplot as plt
    from PIL import Image

    shown = errors[:max_n]
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, e in zip(axes.ravel(), shown):
        with Image.open(e["file"]) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(f"{e['label']} ->\n{e['predicted']} ({e['confidence']:.2f})", fontsize=8)
    fig.suptitle(f"{len(errors)} misclassified mineral patches" + (f", the {len(shown)} most confident" if
                                                                   len(errors) > len(shown) else ""), fontsize=11)
    save_figure(fig, path, dpi=100)


def plot_confusion(cm: list[list[int]], labels: list[str], path: Path, title: str, dpi: int = 120) -> None:
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(7, 6))
    ConfusionMatrixDisplay(np.asarray(cm), display_labels=labels).plot(ax=ax, cmap="Blues", colorbar=False,
                                                                      xticks_rotation=45)
    ax.set_title(title)
    save_figure(fig, path, dpi=dpi)


def plot_threshold(curve: dict, threshold: float, path: Path, dpi: int = 120) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve["threshold"], curve["accuracy"], label="accuracy of answered mineral patches")
    ax.plot(curve["threshold"], curve["coverage"], label="coverage (mineral patches answered)")
    ax.plot(curve["threshold"], curve["open_set_accuracy"], label="open-set accuracy (incl. negatives)")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set(xlabel="confidence threshold", ylim=(0, 1.02), title="accuracy and coverage vs threshold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=dpi)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/minerals/train/best.pt")
    p.add_argument("--data", default="runs/minerals/samples", help="samples folder (index.csv) or class folders")
    p.add_argument("--split", default="val", choices=["val", "train", "all"],
                   help="with an index.csv: which patches of the run's split.csv (next to the checkpoint)")
    p.add_argument("--threshold", type=float, default=None,
                   help="confidence threshold in [0, 1] for the open-set figures (default: the checkpoint's)")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/eval)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (at least 1)")
    args = p.parse_args(argv)
    for problem in option_problems(args):
        p.error(problem)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out} is a file; give the folder to write into")
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model, meta = load_classifier(args.checkpoint, device)
    threshold = meta["threshold"] if args.threshold is None else args.threshold
    data = Path(args.data)
    split = args.split if (data / "index.csv").exists() else "all"
    pairs = labelled_patches(data, Path(args.checkpoint).parent / "split.csv", split)
    probs, labels, files = [], [], []
    for i, pr, err in predict_probs(model, [f for f, _ in pairs], meta["img_size"], device):
        if err:
            print(f"skipped {err}", file=sys.stderr)
            continue
        probs.append(pr)
        labels.append(CLASSES.index(pairs[i][1]))
        files.append(pairs[i][0])
    if not probs:
        raise SystemExit(f"error: {data}: no readable patch to evaluate")
    probs, labels = np.stack(probs), np.asarray(labels)
    report = summarise(probs, labels, threshold)
    errors = misclassified(files, probs, labels)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", report)
    c = report["closed_set"]
    if c is not None:
        plot_confusion(c["confusion_matrix"], MINERALS, out / "confusion_matrix.png",
                       f"{meta['backbone']}: {split} mineral patches (acc {c['accuracy']:.3f})")
    plot_confusion(report["open_set"]["confusion_matrix"], MINERALS + [UNKNOWN], out / "confusion_matrix_open_set.png",
                   f"with threshold {threshold:.2f} ('{NEGATIVE}' patches should be '{UNKNOWN}')")
    plot_threshold(report["threshold_curve"], threshold, out / "threshold_curve.png")
    with atomic_write(out / "errors.csv", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "predicted", "confidence", "p_label"])
        w.writeheader()
        w.writerows(errors)
    plot_errors(errors, out / "errors.png")
    closed = (f"accuracy {c['accuracy']:.4f}, macro-F1 {c['macro_f1']:.4f}" if c is not None
              else "no mineral patch")
    print(f"{report['n_patches']} patches ({split}): {closed}; threshold {threshold:.2f}: open-set accuracy "
          f"{report['open_set']['accuracy']:.4f}, coverage {report['coverage_at_threshold']:.3f}; wrote {out}",
          file=sys.stderr)
    for name, m in (c["per_class"].items() if c is not None else []):
        print(f"  {name:<12} P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1-score']:.3f}  "
              f"n {int(m['support'])}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
