"""Measure a trained classifier on labelled patches: accuracy, macro-F1, per-class P/R/F1, confusion matrix,
and accuracy / coverage against the confidence threshold.

    python minerals/evaluate.py --checkpoint runs/minerals/train/best.pt --data runs/minerals/samples \
        [--split val] --out runs/minerals/eval

Labelled patches are either an extracted-samples folder (``index.csv``; ``--split val`` keeps the validation
patches of the run's ``split.csv``) or a folder of ``<class>/<patch>`` sub-folders (``negative/`` for
non-minerals). Writes ``metrics.json`` (with the expected calibration error of the calibrated confidences),
``confusion_matrix.png``, ``threshold_curve.png``, ``reliability.png`` and, for looking at what goes wrong,
``errors.csv`` (every mineral patch whose most likely mineral is not its label, the most
confident mistakes first) with ``errors.png`` (a thumbnail sheet of the first of them). Without ``--checkpoint``
the run of ``make train-minerals`` is used, else the one of ``make demo-minerals``; without ``--data``, the
samples that checkpoint was trained on. An unreadable patch is named on stderr and left out of the figures (exit
status 1); a checkpoint or data folder that cannot be used is one line (exit status 2).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from common.config import HelpFormatter
from common.io import IMAGE_EXTENSIONS, atomic_write, save_figure, write_json
from minerals.config import CLASSES, DEVICES, MINERALS, NEGATIVE, default_checkpoint
from minerals.decision import (
    UNKNOWN,
    answered_at,
    decide,
    expected_calibration_error,
    mineral_confidence,
    mineral_metrics,
    reliability,
    threshold_curve,
)
from minerals.predict import CheckpointError, load_classifier, option_problems, predict_probs


def labelled_patches(data: Path, split_csv: Path | None = None, split: str = "all",
                     photos: Path | None = None) -> list[tuple[Path, str]]:
    """``(file, label)`` pairs from an index.csv folder (optionally one split of a run) or class folders;
    ``ValueError`` saying what is missing when there are none. ``photos``: with an index.csv, the whole source
    photo (``photos/<source>``) of each mineral patch instead of the patch; negatives keep their patch."""
    if (data / "index.csv").exists():
        from minerals.data import read_index

        rows = read_index(data)
        if split != "all":
            if split_csv is None or not split_csv.exists():
                raise ValueError(f"--split {split}: the run's split.csv was not found ({split_csv})")
            with open(split_csv, newline="") as f:
                keep = {r["patch"] for r in csv.DictReader(f) if r.get("split") == split}
            if not keep:
                raise ValueError(f"--split {split}: {split_csv} holds no {split} patches (a run trained on every "
                                 "photo, --val-fold -1, held none out): give --data <class folders> of new patches")
            rows = [r for r in rows if r["patch"] in keep]
            if len(rows) < len(keep):  # the samples were extracted again (other photos) since the run
                lost = (f"{len(keep) - len(rows)} of the {len(keep)} {split} patches of {split_csv} are not in "
                        f"{data}/index.csv")
                if not rows:
                    raise ValueError(f"{lost}: evaluate the samples the run was trained on (or --split all)")
                print(f"warning: {lost}; scoring the {len(rows)} found", file=sys.stderr)
        if photos is not None:
            return [(photos / r["source"] if r["kind"] == "positive" else Path(r["file"]), r["label"]) for r in rows]
        return [(Path(r["file"]), r["label"]) for r in rows]
    pairs = []
    ignored = sorted(d.name for d in data.iterdir() if d.is_dir() and d.name not in CLASSES) if data.is_dir() else []
    if ignored:  # a misspelt or extra label folder would otherwise drop out of the figures unsaid
        print(f"warning: {data}: folders {ignored} are not among {CLASSES}; not evaluated", file=sys.stderr)
    for c in CLASSES:
        if (data / c).is_dir():
            pairs += [(f, c) for f in sorted((data / c).iterdir()) if f.suffix.lower() in IMAGE_EXTENSIONS
                      and not (f.name.startswith(".") and ".tmp." in f.name)]  # (not a killed tool's temp file)
    if not pairs:
        raise ValueError(f"{data}: neither index.csv nor <class>/ folders of patches")
    return pairs


def summarise(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """All metrics of one evaluation; ``probs`` (N, 8) calibrated softmax, ``labels`` (N,) indices into CLASSES."""
    from common.metrics import classification_summary

    pos = labels < len(MINERALS)
    closed = mineral_metrics(probs, labels) if pos.any() else None  # None: negatives only (a rejection test)
    _, results = decide(probs, threshold)
    truth = [CLASSES[i] if i < len(MINERALS) else UNKNOWN for i in labels]
    open_set = classification_summary(truth, results, MINERALS + [UNKNOWN])
    curve = threshold_curve(probs, labels)
    at = answered_at(probs, labels, threshold)
    return {"n_patches": int(len(labels)), "n_mineral_patches": int(pos.sum()), "threshold": threshold,
            "closed_set": closed,  # the most likely mineral, mineral patches only (the usual dataset metric)
            "open_set": open_set,  # with the threshold: negatives must come out "unknown"
            # mineral patches answered / right and answered (an "unknown" counts as wrong) / right among those answered
            **{f"{k}_at_threshold": v for k, v in at.items()},
            "ece": expected_calibration_error(probs, labels),  # confidence against the share of right answers
            "reliability": reliability(probs, labels),
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


def draw_reliability(ax, rel: dict, label: str, title: str) -> None:
    """One reliability diagram on ``ax``: per confidence bin (``rel``: confidence, accuracy, count lists), the
    share of right answers against the mean confidence, each point labelled with its number of patches."""
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    ax.plot(rel["confidence"], rel["accuracy"], "o-", label=label)
    for x, y, n in zip(rel["confidence"], rel["accuracy"], rel["count"]):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlabel="confidence (most likely mineral)", ylabel="share right", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def plot_reliability(rel: dict, ece: float, path: Path, dpi: int = 120) -> None:
    """Reliability diagram of one run (``draw_reliability``) -> ``path``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    draw_reliability(ax, rel, "this model", f"reliability (ECE {ece:.3f}; numbers: patches)")
    save_figure(fig, path, dpi=dpi)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="best.pt written by train.py (default: runs/minerals/train/best.pt of make train-minerals, "
                        "else runs/minerals_demo/scratch/best.pt of make demo-minerals)")
    p.add_argument("--data", default=None, help="samples folder (index.csv) or class folders (default: the samples "
                                                "the checkpoint was trained on)")
    p.add_argument("--split", default="val", choices=["val", "train", "all"],
                   help="with an index.csv: which patches of the run's split.csv (next to the checkpoint)")
    p.add_argument("--photos", default=None,
                   help="with an index.csv: score the whole source photo (PHOTOS/<its source>) of each mineral patch "
                        "instead of the extracted patch, as a user who passes whole photos gets them; negatives keep "
                        "their patch (default: the patches)")
    p.add_argument("--threshold", type=float, default=None,
                   help="confidence threshold in [0, 1] for the open-set figures (default: the checkpoint's)")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/eval)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to run (auto: cuda when available)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (at least 1)")
    args = p.parse_args(argv)
    for problem in option_problems(args):
        p.error(problem)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out} is a file; give the folder to write into")
    return args


def score(model, meta: dict, pairs: list[tuple[Path, str]], device) -> tuple[np.ndarray, np.ndarray, list, int]:
    """(calibrated probabilities (N, 8), labels (N,), files, unreadable count) of the readable ``pairs``."""
    probs, labels, files, skipped = [], [], [], 0
    for i, pr, err in predict_probs(model, [f for f, _ in pairs], meta["img_size"], device,
                                    temperature=meta["temperature"], progress=len(pairs) > 128):
        if err:
            print(f"skipped {err}", file=sys.stderr)
            skipped += 1
            continue
        probs.append(pr)
        labels.append(CLASSES.index(pairs[i][1]))
        files.append(pairs[i][0])
    if not probs:
        return np.zeros((0, len(CLASSES))), np.zeros(0, int), [], skipped
    return np.stack(probs), np.asarray(labels), files, skipped


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from minerals.runtime import pick_device

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint()
    try:
        model, meta = load_classifier(checkpoint, device)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    threshold = meta["threshold"] if args.threshold is None else args.threshold
    data = Path(args.data or meta["config"].get("data", ""))
    if not args.data:
        print(f"no --data given: evaluating {data} (the samples {checkpoint} was trained on)", file=sys.stderr)
    split = args.split if (data / "index.csv").exists() else "all"
    try:
        pairs = labelled_patches(data, checkpoint.parent / "split.csv", split,
                                 Path(args.photos) if args.photos else None)
    except (ValueError, FileNotFoundError) as err:  # (read_index: no index.csv, a foreign label)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    probs, labels, files, skipped = score(model, meta, pairs, device)
    if not files:
        print(f"error: {data}: no readable patch to evaluate", file=sys.stderr)
        raise SystemExit(2)
    report = {**summarise(probs, labels, threshold), "temperature": meta["temperature"], "unreadable": skipped,
              "input": "whole source photos" if args.photos else "patches"}
    out = Path(args.out) if args.out else checkpoint.parent / "eval"
    write_outputs(report, misclassified(files, probs, labels), out, meta, split, threshold)
    c = report["closed_set"]
    closed = (f"accuracy {c['accuracy']:.4f}, macro-F1 {c['macro_f1']:.4f}" if c is not None
              else "no mineral patch")
    print(f"{report['n_patches']} patches ({split}" + (f"; {skipped} unreadable, named above" if skipped else "")
          + f"): {closed}; threshold {threshold:.2f}: open-set accuracy {report['open_set']['accuracy']:.4f}, "
          f"coverage {report['coverage_at_threshold']:.3f} (right: {report['mineral_accuracy_at_threshold']:.3f} of "
          f"the mineral patches, {report['answered_accuracy_at_threshold']:.3f} of those answered); calibration "
          f"error (ECE) {report['ece']:.3f} "
          f"(temperature {meta['temperature']:.3g}); wrote {out}", file=sys.stderr)
    for name, m in (c["per_class"].items() if c is not None else []):
        print(f"  {name:<12} P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1-score']:.3f}  "
              f"n {int(m['support'])}", file=sys.stderr)
    return report


def write_outputs(report: dict, errors: list[dict], out: Path, meta: dict, split: str, threshold: float) -> None:
    """metrics.json, the confusion matrices, threshold curve, reliability diagram, errors.csv and errors.png."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", report)
    c = report["closed_set"]
    if c is not None:
        plot_confusion(c["confusion_matrix"], MINERALS, out / "confusion_matrix.png",
                       f"{meta['backbone']}: {split} mineral patches (acc {c['accuracy']:.3f})")
    plot_confusion(report["open_set"]["confusion_matrix"], MINERALS + [UNKNOWN], out / "confusion_matrix_open_set.png",
                   f"with threshold {threshold:.2f} ('{NEGATIVE}' patches should be '{UNKNOWN}')")
    plot_threshold(report["threshold_curve"], threshold, out / "threshold_curve.png")
    plot_reliability(report["reliability"], report["ece"], out / "reliability.png")
    with atomic_write(out / "errors.csv", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "predicted", "confidence", "p_label"])
        w.writeheader()
        w.writerows(errors)
    plot_errors(errors, out / "errors.png")


if __name__ == "__main__":
    sys.exit(1 if main().get("unreadable") else 0)
