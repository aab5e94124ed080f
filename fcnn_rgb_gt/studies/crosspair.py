"""Study: which weights and which post-processing transfer best across the Dubai pairs, from the same trainings.

    python -m fcnn_rgb_gt.studies.crosspair --data ../shared/data/fcnn --runs runs/fcnn_bench --seeds 0 1 2

Reads the runs bench.py trains (``<runs>/<pair>/seed<S>/``: train.py's defaults on each Dubai pair) and scores,
on every other Dubai pair (and, for runs on ``train_substitute``, on the other ``extra/*`` pairs, reported
apart), each combination of

* weights: ``peak`` (the epoch with the best strip IoU at 0.5, the former default), ``last`` (the last
  epoch's), ``ema`` (exponential moving average, best.pt's model), ``swa`` (uniform average, second half);
* threshold: a fixed probability (``0.5``, ...), ``matched`` (the threshold at which the run's own validation
  strip is marked building as often as it truly is) or ``prior`` (the threshold at which the test image itself
  is marked building as often as the training image is building: no label of the test image is used);
* test-time flips: ``plain`` or ``flips`` (mean probability of the image and its 3 flips);
* clean-up: ``morph0`` (none) or ``morph<r>``: opening then closing of the mask with a (2r+1) px square.

Rows go to ``--out`` (JSON); the summary per combination (matrix mean of the per-cell seed means, worst cell,
mean building share marked) is printed as a markdown table, best first.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from common.io import read_rgb, write_json
from common.metrics import iou
from fcnn_rgb_gt.bench import cross_pairs
from fcnn_rgb_gt.config import REPO_ROOT
from fcnn_rgb_gt.data import read_gt, spatial_split
from fcnn_rgb_gt.infer import averaged_weights, fuse_batch_norm, predict_probs, prepare, share_threshold
from fcnn_rgb_gt.model import FCN, ModelConfig

MORPH = (0, 2, 4)
THRESHOLDS = ("0.5", "matched")  # a number, "matched" (the strip's share) or "prior" (see below)


def weight_sets(run: Path, names: list[str] | None) -> dict:
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    states = {"peak": best["peak_model"], "last": last["model"], "ema": best["model"],
              "swa": averaged_weights(last["averages"]["swa"])}
    models = {}
    for name, state in states.items():
        if names and name not in names:
            continue
        m = FCN(ModelConfig.from_dict(best["model_config"]))
        m.load_state_dict(state)
        models[name] = prepare(fuse_batch_norm(m), torch.device("cpu"))
    return models, best


def probs(model, image: np.ndarray, flips: bool) -> dict:
    """Building probability, plain and (``flips``) averaged over the image and its 3 flips."""
    p = predict_probs(model, image)
    if not flips:
        return {"plain": p}
    acc = p.copy()
    for flip in ((1,), (0,), (0, 1)):
        acc += np.flip(predict_probs(model, np.ascontiguousarray(np.flip(image, flip))), flip)
    return {"plain": p, "flips": acc / 4}


def clean(mask: np.ndarray, r: int) -> np.ndarray:
    if r == 0:
        return mask
    k = 2 * r + 1
    m = mask.astype(np.uint8)
    m = ndimage.maximum_filter(ndimage.minimum_filter(m, k), k)  # opening: drops specks
    m = ndimage.minimum_filter(ndimage.maximum_filter(m, k), k)  # closing: fills holes
    return m.astype(bool)


def score(run: Path, train_dir: Path, tests: list[Path], cache: dict, names: list[str] | None, flips: bool,
          thresholds=THRESHOLDS, morph=MORPH) -> list[dict]:
    models, best = weight_sets(run, names)
    image = read_rgb(train_dir / "rgb.png")
    mask = read_gt(train_dir / "gt.png", image.shape[:2])
    split = spatial_split(mask, best["config"].get("val_fraction", 0.2), gap=16)
    strip, strip_mask = split.val(image), split.val(mask)
    rows = []
    for wname, model in models.items():
        sp = probs(model, strip, flips)
        thr = {tta: {t: share_threshold(p, float(strip_mask.mean())) if t == "matched" else None if t == "prior"
                     else float(t) for t in thresholds} for tta, p in sp.items()}
        for d in tests:
            if d not in cache:
                img = read_rgb(d / "rgb.png")
                cache[d] = (img, read_gt(d / "gt.png", img.shape[:2]).astype(bool))
            img, gt = cache[d]
            tp = probs(model, img, flips)
            for tta, tname, r in itertools.product(tp, thresholds, morph):
                t = thr[tta][tname] if tname != "prior" else share_threshold(tp[tta], float(mask.mean()))
                pred = clean(tp[tta] >= t, r)
                rows.append({"train": train_dir.name, "test": d.name, "weights": wname, "threshold": tname,
                             "tta": tta, "morph": r, "t": round(t, 4), "iou": round(iou(pred, gt), 4),
                             "share": round(float(pred.mean()), 4), "true_share": round(float(gt.mean()), 4)})
        print(f"  {run}: {wname} done", flush=True)
    return rows


def summary(rows: list[dict], pool: set[str]) -> list[dict]:
    """Per combination: the seed mean of every (train, test) cell of the Dubai matrix, their mean and worst."""
    out = []
    key = ("weights", "threshold", "tta", "morph")
    for combo in sorted({tuple(r[k] for k in key) for r in rows}):
        sel = [r for r in rows if tuple(r[k] for k in key) == combo and r["test"] in pool]
        cells = {}
        for r in sel:
            cells.setdefault((r["train"], r["test"]), []).append(r["iou"])
        means = {c: float(np.mean(v)) for c, v in cells.items()}
        seeds = {len(v) for v in cells.values()}
        out.append({**dict(zip(key, combo)), "matrix_mean": round(float(np.mean(list(means.values()))), 4),
                    "worst_cell": round(min(means.values()), 4), "cells": {f"{a}->{b}": round(v, 4)
                                                                          for (a, b), v in means.items()},
                    "share": round(float(np.mean([r["share"] for r in sel])), 4),
                    "true_share": round(float(np.mean([r["true_share"] for r in sel])), 4), "seeds": sorted(seeds)})
    return sorted(out, key=lambda s: -s["matrix_mean"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO_ROOT / "data" / "fcnn"))
    p.add_argument("--runs", default=str(REPO_ROOT / "runs" / "fcnn_bench"))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--weights", nargs="+", default=None, help="only these weight sets (default: all)")
    p.add_argument("--no-flips", action="store_true", help="leave out the test-time flips")
    p.add_argument("--thresholds", nargs="+", default=list(THRESHOLDS), help="numbers, matched, prior")
    p.add_argument("--morph", nargs="+", type=int, default=list(MORPH), help="clean-up radii (0: none)")
    p.add_argument("--out", default=str(REPO_ROOT / "runs" / "fcnn_studies" / "crosspair.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    pool, others = cross_pairs(Path(args.data))
    rows, cache = [], {}
    for train_dir, seed in itertools.product(pool, args.seeds):
        run = Path(args.runs) / train_dir.name / f"seed{seed}"
        tests = [d for d in pool if d != train_dir] + (others if train_dir == pool[0] else [])
        rows += [{**r, "seed": seed} for r in score(run, train_dir, tests, cache, args.weights, not args.no_flips,
                                                              args.thresholds, args.morph)]
    table = summary(rows, {d.name for d in pool})
    write_json(args.out, {"rows": rows, "summary": table})
    print("| weights | threshold | tta | morph | matrix mean | worst cell | share marked (true) | cells |")
    print("|---|---|---|---|---|---|---|---|")
    for s in table:
        print(f"| {s['weights']} | {s['threshold']} | {s['tta']} | {s['morph']} | {s['matrix_mean']} | "
              f"{s['worst_cell']} | {s['share']} ({s['true_share']}) | "
              + ", ".join(f"{k} {v}" for k, v in s["cells"].items()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
