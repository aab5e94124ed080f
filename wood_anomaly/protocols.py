"""Generalization protocols: how the default holds on data it was not designed on (bench.py runs them).

Every protocol is the brief's setting, train.py on a folder of unlabeled photos then predict.py on photos, scored
against masks that training never sees: pixel AUROC, AP, AUPRO (FPR 0.3), the best F1 over all thresholds, the F1
of the masks predict.py wrote (``preds.png``, the label-free threshold) and their ratio, and how many photos with
defects were labelled anomalous. Maps of all photos of a protocol are pooled.

From the real photos (``--data`` holding images/ and masks/consensus/):

* ``lobo``: leave one board out: train on the other photos, predict the left-out board's (``_85`` and ``_101``
  show the same board, so they leave together: 6 folds).
* ``crops``: the 512x512 crops of the real photos that hold a defect (at least 0.1 % of their pixels; greedy,
  non-overlapping, on a 256-px grid), trained and predicted as one folder: every photo defective, no clean one.
* ``crops_half``: the same crops downscaled 2x (256x256).

Generated (demo_data.py; always available):

* ``demo_wood``, ``demo_fabric``: the demo generator's 6 wood and 6 woven-fabric photos (half clean).
* ``new_woods``: 24 new-wood photos of 512x512, every one defective (holes, colour and liquid stains, scratches,
  knots of random size and contrast, 1-10 % of the pixels), most geometrically distorted.
* ``new_woods_mixed``: 16 such photos, every other one clean.
* ``new_woods_36``: 36 more (another seed), every one defective: the shape of the held-out set of another wood
  (36 crops of 512x512), and a set the threshold rule was not designed on.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.io import list_images, read_mask, read_rgb, save_image

REAL = ("lobo", "crops", "crops_half")
GENERATED = ("demo_wood", "demo_fabric", "new_woods", "new_woods_mixed", "new_woods_36")
PROTOCOLS = REAL + GENERATED
GENERATED_SETS = {  # demo_data.write arguments
    "demo_wood": {"seed": 0, "surface": "wood"},
    "demo_fabric": {"seed": 1, "surface": "fabric"},
    "new_woods": {"seed": 11, "surface": "varied", "size": (512, 512), "n_images": 24, "clean_every": 0},
    "new_woods_mixed": {"seed": 12, "surface": "varied", "size": (512, 512), "n_images": 16, "clean_every": 2},
    "new_woods_36": {"seed": 31, "surface": "varied", "size": (512, 512), "n_images": 36, "clean_every": 0},
}


def consensus(data: Path, stem: str) -> np.ndarray:
    return read_mask(data / "masks" / "consensus" / f"{stem}.png", {0: 0}, default=1, colours=True).astype(bool)


def write_photo(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray) -> None:
    save_image(folder / "images" / f"{stem}.png", image)
    save_image(folder / "masks" / "consensus" / f"{stem}.png", mask.astype(np.uint8) * 255)


def board(stem: str) -> str:
    """The board a real photo shows: ``_85`` and ``_101`` are one board (PROVENANCE.md), the others their own."""
    return "_85" if stem.endswith(("_85", "_101")) else stem


def lobo_folds(data: Path, work: Path) -> list[tuple[Path, Path]]:
    """``(train folder, predict folder)`` per board: the other photos, and the left-out board's photos."""
    paths = list_images(data / "images")
    folds = []
    for b in dict.fromkeys(board(p.stem) for p in paths):
        fold = work / f"without{b}"
        for p in paths:
            part = "test" if board(p.stem) == b else "train"
            (fold / part / "images").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, fold / part / "images" / p.name)
            if part == "test":
                mask = consensus(data, p.stem)
                save_image(fold / part / "masks" / "consensus" / f"{p.stem}.png", mask.astype(np.uint8) * 255)
        folds.append((fold / "train", fold / "test"))
    return folds


def defect_crops(mask: np.ndarray, size: int, min_share: float) -> list[tuple[int, int]]:
    """Top-left corners of non-overlapping ``size`` crops (on a ``size/2`` grid) holding at least ``min_share``
    defect pixels, the most defective first."""
    step = size // 2
    cand = [(mask[y:y + size, x:x + size].mean(), y, x) for y in range(0, mask.shape[0] - size + 1, step)
            for x in range(0, mask.shape[1] - size + 1, step)]
    chosen: list[tuple[int, int]] = []
    for share, y, x in sorted(cand, reverse=True):
        if share >= min_share and all(abs(y - cy) >= size or abs(x - cx) >= size for cy, cx in chosen):
            chosen.append((y, x))
    return chosen


def crop_set(data: Path, folder: Path, size: int = 512, min_share: float = 1e-3, down: int = 1) -> Path:
    """The defective ``size`` crops of every real photo (``down``: then downscaled by this factor)."""
    for p in tqdm(list_images(data / "images"), desc="crops", unit="photo"):
        img, mask = read_rgb(p), consensus(data, p.stem)
        for y, x in defect_crops(mask, size, min_share):
            c_img, c_mask = img[y:y + size, x:x + size], mask[y:y + size, x:x + size]
            if down > 1:
                from PIL import Image

                c_img = np.asarray(Image.fromarray(c_img).resize((size // down,) * 2, Image.BILINEAR))
                c_mask = np.asarray(Image.fromarray(c_mask.astype(np.uint8) * 255).resize(
                    (size // down,) * 2, Image.BILINEAR)) > 127
            write_photo(folder, f"{p.stem} y{y} x{x}", c_img, c_mask)
    return folder


def folds(name: str, data: Path, work: Path) -> list[tuple[Path, Path]]:
    """``(train folder, predict folder)`` pairs of protocol ``name`` (one pair, the same folder, but for lobo)."""
    if work.exists():
        shutil.rmtree(work)
    if name == "lobo":
        return lobo_folds(data, work)
    if name in ("crops", "crops_half"):
        folder = crop_set(data, work / "set", down=2 if name == "crops_half" else 1)
    else:
        from wood_anomaly import demo_data

        folder = demo_data.write(work / "set", **GENERATED_SETS[name])
    return [(folder, folder)]


def score(pairs: list[tuple[Path, Path]]) -> dict:
    """Pooled metrics of the predictions in ``<predict folder>/../pred`` of every fold against its masks."""
    import csv
    import json

    from wood_anomaly.evaluate import pixel_metrics

    maps, masks, binary, labels, thresholds = [], [], [], [], []
    for _, test in pairs:
        pred = test.parent / "pred"
        with open(pred / "predictions.csv", newline="") as f:
            rows = {Path(r["image"]).stem: r for r in csv.DictReader(f)}
        if (pred / "threshold.json").is_file():  # the threshold of the training fit and the one used
            used = json.loads((pred / "threshold.json").read_text())
            thresholds.append([round(used.get("training_threshold", used["threshold"]), 3),
                               round(used["threshold"], 3)])
        for p in list_images(test / "images"):
            truth = consensus(test, p.stem)
            maps.append(np.load(pred / p.stem / "anomaly_map.npy").astype(np.float32))
            masks.append(truth)
            binary.append(read_mask(pred / p.stem / "preds.png", {0: 0}, default=1).astype(bool))
            labels.append((bool(truth.any()), rows[p.stem]["label"] == "anomalous"))
    out = {"photos": len(maps), "defect_share": float(np.mean([m.mean() for m in masks]))}
    if any(m.any() for m in masks):
        out.update(pixel_metrics(maps, masks, binary))
        out["mask_f1_over_best"] = out["mask_f1"] / max(out["best_f1"], 1e-9)
    out["defective_labelled_anomalous"] = f"{sum(t and p for t, p in labels)} of {sum(t for t, _ in labels)}"
    out["clean_labelled_normal"] = f"{sum(not t and not p for t, p in labels)} of {sum(not t for t, _ in labels)}"
    out["threshold_training_and_used"] = thresholds  # per fold, in training spreads
    return out


def run(name: str, data: Path, work: Path, train_args: list[str], device: str) -> dict:
    """Build protocol ``name`` in ``work``, train and predict every fold (in this process), and score it."""
    from wood_anomaly import predict, train

    t0 = time.perf_counter()
    pairs = folds(name, data, work)
    for train_dir, test_dir in pairs:
        run_dir = test_dir.parent
        train.main(["--data", str(train_dir), "--out", str(run_dir), "--device", device, *train_args])
        predict.main(["--data", str(test_dir), "--model", str(run_dir / "model.pt"), "--out", str(run_dir / "pred"),
                      "--device", device])
    seconds = time.perf_counter() - t0
    return {**score(pairs), "folds": len(pairs), "seconds_train_and_predict": round(seconds, 1)}


def main(argv=None) -> None:
    import argparse
    import shlex

    from common.config import HelpFormatter
    from common.io import dumps_json, write_json

    p = argparse.ArgumentParser(description="Run one generalization protocol and write its figures as JSON.",
                                formatter_class=HelpFormatter)
    p.add_argument("name", choices=PROTOCOLS, help="the protocol")
    p.add_argument("--data", default="../shared/data/wood", help="real wood folder (for lobo, crops, crops_half)")
    p.add_argument("--work", required=True, help="folder for the protocol's photos, models and predictions")
    p.add_argument("--out", required=True, help="JSON file of the figures")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device of train and predict")
    p.add_argument("--train-args", default="", help="extra train.py options")
    args = p.parse_args(argv)
    result = run(args.name, Path(args.data), Path(args.work), shlex.split(args.train_args), args.device)
    write_json(args.out, result)
    print(dumps_json(result, indent=1))


if __name__ == "__main__":
    main()
