"""Which ship / no-ship rule generalises? Choose the post-processing on the training part, score it on the test split.

    python -m airbus_ships.studies.rule_study --run runs/airbus_bench --data ../shared/data/airbus

Uses a benchmark run of ``bench.py`` (its split ``RUN/split/{train,test}.csv`` and model ``RUN/model/best.keras``).
Probability maps are predicted once, tiled (``test.py --how tile``), and cached (``OUT/probs.npz``; ``--out``
defaults to ``RUN/rule_study``). Then each way of choosing the rule picks its parameters by
maximising the Kaggle score on images of the *training part* only: train.py's own validation images (unseen by
the network), or the whole training part (mostly images the network was trained on). The test split is only
scored, never used to choose. Rules: probability threshold, minimum component area, minimum component peak
probability (``ShipRule``) and an image-level gate (an image holds ships only if its highest probability reaches
the gate). Prints a table and writes ``OUT/results.json``.

    python -m airbus_ships.studies.rule_study --run runs/airbus_bench --data ../shared/data/airbus --zooms 1,2

compares test-time zooms instead (:func:`predict_zoomed`: the image upsampled z times, so small ships look
larger; maps cached as ``probs_zoom2.npz``): each zoom alone and the pixelwise max / mean of their maps, each with
train.py's rule grid chosen on the training part, scored on the test split (``OUT/zoom_results.json``).
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

from airbus_ships import quiet_tensorflow
from airbus_ships.inference import CONFIDENCES, MIN_SIZES, THRESHOLDS, ComponentStats, component_stats, rule_scores

GATES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def predict_zoomed(model, image: np.ndarray, zoom: int, how: str = "tile") -> np.ndarray:
    """Test-time zoom: ``predict_probs`` on the image upsampled ``zoom`` times (bilinear), so that small ships look
    larger, averaged back over ``zoom x zoom`` blocks to the image's own size (``zoom ** 2`` x slower)."""
    import tensorflow as tf

    from airbus_ships.inference import predict_probs
    if zoom == 1:
        return predict_probs(model, image, how)
    h, w = image.shape[:2]
    big = tf.image.resize(image[None], [h * zoom, w * zoom], method="bilinear").numpy()[0]
    big = np.clip(np.rint(big), 0, 255).astype(image.dtype)
    return predict_probs(model, big, how).reshape(h, zoom, w, zoom).mean(axis=(1, 3))


def predict_all(run: Path, data: Path, threads: int, zoom: int = 1, out: Path | None = None,
                device: str = "auto") -> dict[str, dict]:
    """``{ImageId: {"prob": (768, 768) float16, "truth": [bool masks], "part": "train"|"test"}}`` (cached in ``out``,
    default ``run/rule_study``), predicted tiled (``test.py --how tile``), on the image upsampled ``zoom`` times
    (:func:`predict_zoomed`)."""
    from airbus_ships.data import read_mask_table, ship_instances
    cache = (out or run / "rule_study") / ("probs.npz" if zoom == 1 else f"probs_zoom{zoom}.npz")
    tables = {part: read_mask_table(run / "split" / f"{part}.csv", data / "images").frame
              for part in ("train", "test")}
    if cache.exists():
        probs = dict(np.load(cache))
    else:
        import keras

        from airbus_ships.losses import CUSTOM_OBJECTS
        from airbus_ships.runtime import setup_device
        from common.io import read_rgb
        setup_device(device, threads)
        model = keras.saving.load_model(run / "model" / "best.keras", custom_objects=CUSTOM_OBJECTS, compile=False)
        probs, t0 = {}, time.time()
        for frame in tables.values():
            for row in frame.itertuples():
                probs[row.ImageId] = predict_zoomed(model, read_rgb(row.path), zoom).astype(np.float16)
        print(f"predicted {len(probs)} images in {time.time() - t0:.0f} s")
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **probs)
    return {row.ImageId: {"prob": probs[row.ImageId], "truth": ship_instances(row.rle), "part": part}
            for part, frame in tables.items() for row in frame.itertuples()}


def evaluate(comps: dict[float, list[ComponentStats]], rule: tuple) -> dict:
    """Scores of ``rule`` = (threshold, min area, min peak, image gate); the gate empties images whose highest
    probability is below it."""
    t, m, c, gate = rule
    results = [rule_scores(x, m, c if x.image_max >= gate else np.inf) for x in comps[t]]
    dice = [d for _, _, d in results if d is not None]
    return {"kaggle": float(np.mean([f for f, _, _ in results])),
            "ship_no_ship_accuracy": float(np.mean([ok for _, ok, _ in results])),
            "dice_ship_images": float(np.mean(dice)) if dice else None}


def choose(comps: dict[float, list[ComponentStats]], grid) -> tuple[tuple, float]:
    """The rule of ``grid`` with the highest Kaggle score (ties: the earliest, i.e. least restrictive)."""
    best, best_score = None, -1.0
    for rule in grid:
        score = evaluate(comps, rule)["kaggle"]
        if score > best_score + 1e-9:
            best, best_score = rule, score
    return best, best_score


def zoom_study(by_zoom: dict[int, dict], sets: dict[str, set], out: Path) -> None:
    """Each zoom's maps and their pixelwise max / mean: train.py's rule grid chosen on each part of the training
    set, scored on the test split (with test.py's ``Scores``: Kaggle, dice, ships found by size)."""
    import pandas as pd

    from airbus_ships.inference import ShipRule, ships_from_probs
    from airbus_ships.metrics import Scores
    from common.io import write_json

    zooms = list(by_zoom)
    ids = list(by_zoom[zooms[0]])
    truth = {i: by_zoom[zooms[0]][i]["truth"] for i in ids}
    stack = {i: np.stack([by_zoom[z][i]["prob"].astype(np.float32) for z in zooms]) for i in ids}
    variants = {**{f"zoom {z}": {i: stack[i][k] for i in ids} for k, z in enumerate(zooms)},
                f"max over zooms {zooms}": {i: stack[i].max(axis=0) for i in ids},
                f"mean over zooms {zooms}": {i: stack[i].mean(axis=0) for i in ids}}
    grid = [(t, m, c, 0.0) for t, m, c in itertools.product(THRESHOLDS, MIN_SIZES, CONFIDENCES) if c >= t]
    rows = []
    for name, probs in variants.items():
        comps = {part: {t: [component_stats(probs[i], truth[i], t) for i in sorted(members)] for t in THRESHOLDS}
                 for part, members in sets.items() if part != "test split"}
        for chooser in ("train.py validation", "whole training part"):
            rule, chosen_score = choose(comps[chooser], grid)
            scores = Scores()
            for i in sorted(sets["test split"]):
                scores.add(ships_from_probs(probs[i], ShipRule(*rule[:3])), truth[i], probs[i].shape)
            summary = scores.summary()
            rows.append({"maps": name, "rule chosen on": chooser, "rule (threshold, min area, min peak)": rule[:3],
                         "kaggle on chooser": chosen_score, "test kaggle": summary["kaggle_score"],
                         "test dice ship images": summary["dice_ship_images_mean"],
                         "test ship/no-ship": summary["ship_no_ship_accuracy"],
                         "test found by size": " ".join(f"{r['found_iou_0.5']}/{r['ships']}"
                                                        for r in summary["ships_by_size"]),
                         "test summary": summary})
    table = pd.DataFrame(rows).drop(columns="test summary")
    with pd.option_context("display.width", 250, "display.max_colwidth", 40, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    write_json(out / "zoom_results.json", {"sets": {k: len(v) for k, v in sets.items()}, "rows": rows})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/airbus_bench", help="bench.py run folder (split/, model/)")
    p.add_argument("--data", default="../shared/data/airbus", help="the data the run was made on")
    p.add_argument("--val-fraction", type=float, default=0.15, help="train.py's validation share (its default)")
    p.add_argument("--seed", type=int, default=0, help="train.py's seed in the run (bench: 0)")
    p.add_argument("--threads", type=int, default=2, help="TensorFlow intra- and inter-op threads (0: its choice)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="cpu hides the GPUs; cuda stops when TensorFlow sees none")
    p.add_argument("--out", default="", help="folder for the cached maps and the results (default: RUN/rule_study)")
    p.add_argument("--zooms", default="1", help="comma-separated test-time zooms, e.g. 1,2: compare each zoom and "
                   "the pixelwise max / mean of their maps under train.py's rule grid instead of the rule families")
    args = p.parse_args()
    quiet_tensorflow()
    import pandas as pd

    from airbus_ships.data import split_by_image
    from common.io import write_json

    run, data = Path(args.run), Path(args.data)
    out = Path(args.out) if args.out else run / "rule_study"
    zooms = [int(z) for z in args.zooms.split(",")]
    by_zoom = {z: predict_all(run, data, args.threads, z, out, args.device) for z in zooms}
    images = by_zoom[zooms[0]]
    frame = pd.DataFrame({"ImageId": list(images), "n_ships": [len(v["truth"]) for v in images.values()],
                          "part": [v["part"] for v in images.values()]})
    _, val = split_by_image(frame[frame.part == "train"].reset_index(drop=True), args.val_fraction, args.seed)
    sets = {"train.py validation": set(val.ImageId), "whole training part": set(frame.ImageId[frame.part == "train"]),
            "test split": set(frame.ImageId[frame.part == "test"])}
    if len(zooms) > 1:
        return zoom_study(by_zoom, sets, out)
    comps = {name: {t: [component_stats(images[i]["prob"], images[i]["truth"], t) for i in sorted(ids)]
                    for t in THRESHOLDS} for name, ids in sets.items()}

    grids = {
        "fixed: threshold 0.5, nothing else": [(0.5, 0, 0.5, 0.0)],
        "former train.py grid (threshold 0.4-0.6, area <= 80, peak <= 0.95)": [
            (t, m, c, 0.0) for t, m, c in itertools.product((0.4, 0.5, 0.6), (0, 10, 20, 40, 80),
                                                            (0.5, 0.7, 0.8, 0.9, 0.95)) if c >= t],
        "threshold only": [(t, 0, t, 0.0) for t in THRESHOLDS],
        "threshold + min area": [(t, m, t, 0.0) for t, m in itertools.product(THRESHOLDS, MIN_SIZES)],
        "threshold + image gate": [(t, 0, t, g) for t, g in itertools.product(THRESHOLDS, GATES)],
        "threshold + area + peak (train.py's grid now)": [
            (t, m, c, 0.0) for t, m, c in itertools.product(THRESHOLDS, MIN_SIZES, CONFIDENCES) if c >= t],
        "threshold + area + image gate": [(t, m, t, g) for t, m, g in itertools.product(THRESHOLDS, MIN_SIZES, GATES)],
    }
    rows = []
    for (grid_name, grid), chooser in itertools.product(grids.items(), ("train.py validation", "whole training part")):
        if len(grid) == 1 and chooser != "train.py validation":
            continue
        rule, chosen_score = choose(comps[chooser], grid)
        rows.append({"rule family": grid_name, "chosen on": chooser if len(grid) > 1 else "-",
                     "rule (threshold, min area, min peak, image gate)": rule,
                     "kaggle on chooser": chosen_score, **{f"test {k}": v
                                                           for k, v in evaluate(comps["test split"], rule).items()}})
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.max_colwidth", 60, "display.float_format", "{:.3f}".format):
        print(f"{len(sets['train.py validation'])} validation / {len(sets['whole training part'])} training-part / "
              f"{len(sets['test split'])} test images")
        print(table.to_string(index=False))
    write_json(out / "results.json", {"sets": {k: len(v) for k, v in sets.items()}, "rows": rows})


if __name__ == "__main__":
    main()
