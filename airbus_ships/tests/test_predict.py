"""test.py end to end on demo data: a valid Kaggle submission, overlays, scores, and bad input."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from airbus_ships.model import build_unet
from common.io import rle_decode


def read_submission(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageId", "EncodedPixels"]
    return rows[1:]


@pytest.mark.slow
def test_submission_is_valid(demo_dir, trained_run, tmp_path, run_test_script):
    out = tmp_path / "test"
    proc = run_test_script(demo_dir, trained_run, out)
    rows = read_submission(out / "submission.csv")
    images = sorted(p.name for p in (demo_dir / "images").iterdir())
    assert sorted({r[0] for r in rows}) == images  # every image has at least one row
    for image_id in images:
        rles = [r[1] for r in rows if r[0] == image_id]
        if "" in rles:
            assert rles == [""]  # an empty row only for an image with no ship, and then only one
        masks = [rle_decode(r, (768, 768)) for r in rles if r]  # decodes inside 768x768 (raises otherwise)
        if masks:
            assert np.sum(masks, axis=0).max() == 1  # ships do not overlap (Kaggle rule)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["flips"] is True  # as the rule was chosen (train.py's default) without --flips
    for key in ("kaggle_score", "dice_pixels", "iou_pixels", "dice_ship_images_mean", "ship_no_ship_accuracy"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["images_scored"] == len(images)
    assert "Kaggle score" in proc.stdout
    assert len(list((out / "result-image").glob("*.jpg"))) == len(images)
    # scores.csv: one row per image, whose F2 average to the Kaggle score and whose ship counts match the files
    scores = pd.read_csv(out / "scores.csv", keep_default_na=False)
    assert sorted(scores.ImageId) == images
    assert scores.f2.mean() == pytest.approx(metrics["kaggle_score"], abs=1e-3)
    truth = pd.read_csv(demo_dir / "masks.csv").dropna().groupby("ImageId").size()
    for row in scores.itertuples():
        assert row.true_ships == truth.get(row.ImageId, 0)
        assert row.predicted_ships == sum(1 for r in rows if r[0] == row.ImageId and r[1])
        assert len(str(row.best_iou).split()) == row.true_ships == len(str(row.true_ship_pixels).split())


@pytest.mark.slow
def test_tiled_prediction_matches_whole_image(demo_dir, trained_run):
    import keras

    from airbus_ships.inference import predict_probs
    from airbus_ships.losses import CUSTOM_OBJECTS
    from common.io import read_rgb
    model = keras.saving.load_model(trained_run / "model" / "best.keras", custom_objects=CUSTOM_OBJECTS)
    image = read_rgb(next((demo_dir / "images").iterdir()))
    full, tiled = predict_probs(model, image, "full"), predict_probs(model, image, "tile")
    assert full.shape == tiled.shape == (768, 768)
    assert np.mean(np.abs(full - tiled)) < 0.05  # same network, only the borders of tiles differ


@pytest.mark.parametrize("how", ["full", "tile"])
def test_flipped_prediction_is_the_mean_over_the_flips_and_flip_equivariant(how):
    """predict_probs(flips=True) is the mean of the four flipped maps, each flipped back: on a network that is not
    symmetric (a random 3x3 convolution), the plain map of a flipped image differs from the flipped map, the flipped
    mean does not (up to the order of the sum); odd image sizes come back at their size."""
    import keras

    from airbus_ships.inference import FLIPS, predict_probs
    inputs = keras.Input(shape=(None, None, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid",
                                  kernel_initializer=keras.initializers.RandomNormal(seed=0))(x)
    model = keras.Model(inputs, outputs)
    image = np.random.default_rng(0).integers(0, 256, (75, 98, 3), dtype=np.uint8)
    mean = predict_probs(model, image, how, flips=True)
    assert mean.shape == (75, 98) and mean.dtype == np.float32
    each = [flip(predict_probs(model, np.ascontiguousarray(flip(image)), how)) for flip in FLIPS]
    np.testing.assert_allclose(mean, np.mean(each, axis=0), atol=1e-6)
    mirrored = np.ascontiguousarray(image[:, ::-1])
    assert np.abs(predict_probs(model, mirrored, how)[:, ::-1] - predict_probs(model, image, how)).max() > 0.01
    np.testing.assert_allclose(predict_probs(model, mirrored, how, flips=True)[:, ::-1], mean, atol=1e-6)


def test_zoomed_prediction_comes_back_at_the_image_size():
    """rule_study's test-time zoom 2 predicts on the 2x upsampled image and averages back: for a per-pixel
    network on a smooth image the result is the unzoomed prediction, at the image's own size (also an odd one)."""
    import keras
    from scipy import ndimage

    from airbus_ships.inference import predict_probs
    from airbus_ships.studies.rule_study import predict_zoomed
    inputs = keras.Input(shape=(None, None, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(2.0),
                                  bias_initializer=keras.initializers.Constant(-3.0))(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.uniform(0, 255, (75, 98, 3)), (4, 4, 0)).clip(0, 255).astype(np.uint8)
    plain, zoomed = predict_probs(model, image, "full"), predict_zoomed(model, image, 2, "full")
    assert plain.shape == zoomed.shape == (75, 98)
    assert np.abs(plain - zoomed).max() < 0.01
    assert np.abs(plain - predict_zoomed(model, image, 2, "tile")).max() < 0.01


@pytest.mark.slow
def test_bad_input_is_reported_and_the_run_continues(demo_dir, trained_run, tmp_path, run_test_script):
    data = tmp_path / "bad"
    shutil.copytree(demo_dir / "images", data / "images")
    good = sorted(p.name for p in (data / "images").iterdir())
    (data / "images" / "corrupt.jpg").write_bytes((data / "images" / good[0]).read_bytes()[:400])
    Image.new("RGB", (500, 320), (20, 40, 60)).save(data / "images" / "small.jpg")
    with open(demo_dir / "masks.csv") as f:
        text = f.read()
    text += ("corrupt.jpg,\nsmall.jpg,\nmissing.jpg,1 5\n"
             f"{good[1]},1 3 2\n"               # odd length
             f"{good[2]},589820 50\n"           # beyond the image
             f"{good[3]},10 20 15 3\n"          # overlapping runs
             f"{good[4]},1000 50\n{good[4]},1020 50\n")  # two ships that overlap each other
    (data / "masks.csv").write_text(text)
    out = tmp_path / "out"
    (out).mkdir()
    proc = run_test_script(data, trained_run, out)
    err = proc.stderr
    assert "corrupt.jpg: corrupt or truncated image" in err
    assert "small.jpg: image is 500x320, not 768x768" in err
    assert "missing.jpg: image file not found" in err
    for image_id, why in ((good[1], "odd number"), (good[2], "beyond"), (good[3], "overlap")):
        assert any(f"{image_id}: malformed RLE (" in line and why in line for line in err.splitlines()), why
    assert f"{good[4]}: the two ships overlap; image predicted, not scored" in err
    rows = read_submission(out / "submission.csv")
    ids = {r[0] for r in rows}
    assert set(good) | {"small.jpg", "corrupt.jpg"} == ids  # every image with a file has a row, bad labels too
    assert [r[1] for r in rows if r[0] == "corrupt.jpg"] == [""]  # unreadable: one empty row
    for r in rows:
        if r[0] == "small.jpg" and r[1]:
            rle_decode(r[1], (320, 500))  # encoded for its own shape
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images_scored"] == len(good) - 4  # the four images with bad RLE rows are not scored
    # the ship-free images among good[1:5] now also have ship rows (malformed or overlapping ones): named too
    ship_free = set(pd.read_csv(demo_dir / "masks.csv", keep_default_na=False).query("EncodedPixels == ''").ImageId)
    mixed = [g for g in good[1:5] if g in ship_free]
    for image_id in mixed:
        assert f"{image_id}: an empty row (no ship) besides ship rows; taken as a ship image" in err
    assert len(metrics["problems"]) == 7 + len(mixed)
    assert not list(out.rglob("*.tmp*"))


def test_full_prediction_pads_to_the_stride_of_the_pretrained_encoder():
    """--how full with the EfficientNet-Lite0 U-Net (no pool layers) on an image whose sides are not multiples of
    32: padded to the stride read off the decoder, cropped back (was a ConcatOp error)."""
    from airbus_ships.inference import network_stride, predict_probs
    model = build_unet((8, 16, 32, 64, 128), encoder="efficientnet_lite0", encoder_weights=None)
    assert network_stride(model) == 32
    image = np.random.default_rng(0).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    assert predict_probs(model, image, "full").shape == (70, 100)


@pytest.mark.slow
def test_failed_prediction_split_subset_and_missing_rule(demo_dir, trained_run, tmp_path, monkeypatch, capsys):
    """In one test.py run (in-process): the model folder has no postprocess.json (a clear warning, the default
    rule, said so in test_config.json); --split keeps the run's validation images; the prediction of one of them
    fails (an empty row, reported, the others go on)."""
    import tensorflow as tf

    from airbus_ships import test as test_script
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("best.keras", "config.json"):
        shutil.copy(trained_run / "model" / name, model_dir / name)
    with open(trained_run / "split.csv", newline="") as f:
        val = sorted(r["ImageId"] for r in csv.DictReader(f) if r["subset"] == "val")
    real = test_script.predict_probs

    def fail_on_first(model, image, *args, **kwargs):
        if fail_on_first.calls == 0:
            fail_on_first.calls += 1
            raise tf.errors.InvalidArgumentError(None, None, "ConcatOp : Dimension 1 in both shapes must be equal")
        return real(model, image, *args, **kwargs)

    fail_on_first.calls = 0
    monkeypatch.setattr(test_script, "predict_probs", fail_on_first)
    out = tmp_path / "out"
    result = test_script.main(["--data", str(demo_dir), "--model", str(model_dir / "best.keras"), "--out", str(out),
                               "--overlays", "0", "--split", str(trained_run / "split.csv"), "--subset", "val"])
    err = capsys.readouterr().err
    assert "WARNING:" in err and "postprocess.json: no ship rule" in err
    assert f"{val[0]}: prediction failed (InvalidArgumentError: ConcatOp" in err
    rows = read_submission(out / "submission.csv")
    assert sorted({r[0] for r in rows}) == val and [r[1] for r in rows if r[0] == val[0]] == [""]
    assert result["images_predicted"] == len(val) - 1 == result["images_scored"]
    settings = json.loads((out / "test_config.json").read_text())
    assert settings["rule_source"].startswith("defaults (") and settings["subset"] == "val"
    assert settings["network_stride"] == 8  # the tiny 3-level scratch model of conftest


@pytest.mark.slow
def test_two_shards_merge_to_the_single_worker_submission(demo_dir, trained_run, tmp_path, run_test_script):
    import subprocess
    import sys
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    run_test_script(demo_dir, trained_run, single, "--overlays", "0")
    for i in range(2):
        proc = run_test_script(demo_dir, trained_run, sharded, "--overlays", "0", "--shard", f"{i}/2")
        assert f"shard {i}/2" in proc.stdout
    parts = [read_submission(sharded / f"submission.shard-{i}-of-2.csv") for i in range(2)]
    ids = [{r[0] for r in part} for part in parts]
    assert ids[0] and ids[1] and not ids[0] & ids[1]  # both shards hold images, none twice
    merged = subprocess.run([sys.executable, "-m", "common.shard", "merge", str(sharded / "submission.csv"),
                             "--key", "ImageId"], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    assert (sharded / "submission.csv").read_bytes() == (single / "submission.csv").read_bytes()
    rows = read_submission(single / "submission.csv")
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)  # sorted ImageId order


def test_fast_rule_scores_match_the_kaggle_metric():
    """calibrate_rule's per-threshold component statistics give the same F2 as common.metrics on the masks."""
    from scipy import ndimage

    from airbus_ships.inference import ShipRule, component_stats, rule_scores, ships_from_probs
    from common.metrics import f2_image_score
    rng = np.random.default_rng(0)
    for _ in range(6):
        prob = ndimage.gaussian_filter(rng.random((96, 96)), 3)
        prob = (prob - prob.min()) / (prob.max() - prob.min())
        truth = [lab == i for lab, n in [ndimage.label(ndimage.gaussian_filter(rng.random((96, 96)), 3) > 0.55)]
                 for i in range(1, n + 1)]
        for rule in (ShipRule(0.5, 0, 0.5), ShipRule(0.6, 20, 0.9), ShipRule(0.3, 5, 0.7), ShipRule(0.4, 0, 0.95)):
            expected = f2_image_score(ships_from_probs(prob, rule), truth)
            f2, _, _ = rule_scores(component_stats(prob, truth, rule.threshold), rule.min_size, rule.min_confidence)
            assert f2 == pytest.approx(expected, abs=1e-12)


def test_per_image_breakdown_on_a_hand_made_case():
    """metrics.Scores (test.py's scores): where the Kaggle score is lost, counted on four hand-made images."""
    from airbus_ships.metrics import Scores

    def box(y, x, h=4, w=6):
        m = np.zeros((32, 32), bool)
        m[y:y + h, x:x + w] = True
        return m

    scores = Scores()
    scores.add([box(2, 2)], [box(2, 2), box(20, 20)], (32, 32))  # 1 of 2 ships found exactly: F2 5/(5+4) = 0.556
    scores.add([], [box(10, 10)], (32, 32))                      # a ship image predicted empty: F2 0
    scores.add([box(10, 10)], [], (32, 32))                      # a false ship on a ship-free image: F2 0
    scores.add([], [], (32, 32))                                 # ship-free, right: F2 1
    s = scores.summary()
    assert s["kaggle_score"] == pytest.approx((5 / 9 + 0 + 0 + 1) / 4)
    assert s["per_image"] == {"ship_images_mean_f2": pytest.approx(5 / 18), "ship_images_f2_zero": 1,
                              "ship_images_predicted_empty": 1, "ship_free_images_with_a_false_ship": 1,
                              "true_ships": 3, "predicted_ships_on_ship_images": 1}
    assert s["ship_no_ship_accuracy"] == 0.5
    # the three true ships (24 px each) all fall in the smallest bin: one found exactly, two untouched (which the
    # area ratio leaves out)
    assert s["ships_by_size"][0] == {"pixels": "0-99", "ships": 3, "found_iou_0.5": 1, "median_best_iou": 0.0,
                                     "median_area_ratio": 1.0}
    assert [r["ships"] for r in s["ships_by_size"][1:]] == [0, 0, 0, 0]


def test_ship_size_breakdown_counts_a_match_by_iou():
    """A large ship half covered (IoU 0.5: not found, the threshold is strict) and one covered at IoU 0.75 land in
    their size bins with those IoUs and the predicted ships' relative areas; a small ship next to them is missed;
    a ship whose prediction takes in its wake is found too large."""
    from airbus_ships.metrics import Scores

    big, half, small = (np.zeros((64, 64), bool) for _ in range(3))
    big[0:20, 0:20] = True            # 400 px
    half[0:10, 0:20] = True           # covers half of it: IoU 0.5
    small[40:45, 40:45] = True        # 25 px
    bigger = np.zeros((64, 64), bool)
    bigger[20:60, 0:30] = True        # 1200 px
    part = np.zeros((64, 64), bool)
    part[20:50, 0:30] = True          # IoU 900 / 1200 = 0.75
    scores = Scores()
    scores.add([half, part], [big, small, bigger], (64, 64))
    rows = {r["pixels"]: r for r in scores.summary()["ships_by_size"]}
    assert rows["300-999"] == {"pixels": "300-999", "ships": 1, "found_iou_0.5": 0, "median_best_iou": 0.5,
                               "median_area_ratio": 0.5}
    assert rows["1000-2999"]["found_iou_0.5"] == 1 and rows["1000-2999"]["median_best_iou"] == pytest.approx(0.75)
    assert rows["1000-2999"]["median_area_ratio"] == pytest.approx(0.75)
    assert rows["0-99"] == {"pixels": "0-99", "ships": 1, "found_iou_0.5": 0, "median_best_iou": 0.0,
                            "median_area_ratio": None}
    assert rows[">=3000"]["ships"] == 0 and rows[">=3000"]["median_best_iou"] is None

    ship, with_wake = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
    ship[10:16, 10:30] = True         # 120 px
    with_wake[10:16, 10:46] = True    # the same ship and its wake: 216 px, IoU 0.56
    wake = Scores()
    wake.add([with_wake], [ship], (64, 64))
    row = wake.summary()["ships_by_size"][1]
    assert (row["found_iou_0.5"], row["median_area_ratio"]) == (1, pytest.approx(1.8))


def test_zoom_study_scores_each_map_variant(tmp_path):
    """rule_study's zoom comparison on hand-made maps: zoom 1 exact, zoom 2 blank: zoom 1 and the pixelwise max
    score 1, zoom 2 only the ship-free images."""
    from airbus_ships.studies.rule_study import zoom_study
    ship = np.zeros((64, 64), bool)
    ship[10:20, 30:36] = True
    images = {f"{i}.jpg": [ship] if i % 2 else [] for i in range(8)}
    by_zoom = {z: {i: {"prob": (np.any(t, axis=0) if t and z == 1 else np.zeros((64, 64))).astype(np.float16),
                       "truth": t} for i, t in images.items()} for z in (1, 2)}
    sets = {"train.py validation": {"0.jpg", "1.jpg"}, "whole training part": {"0.jpg", "1.jpg", "2.jpg", "3.jpg"},
            "test split": {"4.jpg", "5.jpg", "6.jpg", "7.jpg"}}
    zoom_study(by_zoom, sets, tmp_path)
    rows = json.loads((tmp_path / "zoom_results.json").read_text())["rows"]
    assert len(rows) == 4 * 2  # zoom 1, zoom 2, max, mean; each rule chosen on two parts
    kaggle = {(r["maps"], r["rule chosen on"]): r["test kaggle"] for r in rows}
    assert kaggle[("zoom 1", "whole training part")] == 1.0
    assert kaggle[("max over zooms [1, 2]", "whole training part")] == 1.0
    assert kaggle[("zoom 2", "whole training part")] == 0.5  # the two ship-free test images only


def test_bench_record_is_one_run_of_the_default(tmp_path, strict_json):
    """bench.py's record from a finished run folder (train.py's and test.py's files, made up here): one run, the
    keys of every benchmark record, no history, strict JSON."""
    from airbus_ships.bench import make_record
    from common.io import write_json
    run = tmp_path / "run"
    ships_by_size = [{"pixels": "0-99", "ships": 2, "found_iou_0.5": 1, "median_best_iou": 0.5,
                      "median_area_ratio": None}]
    write_json(run / "test" / "metrics.json", {
        "kaggle_score": 0.6, "dice_ship_images_mean": 0.7, "dice_pixels": 0.8, "iou_pixels": 0.7,
        "iou_ship_images_mean": 0.6, "ship_no_ship_accuracy": 0.9, "per_image": {"true_ships": 2},
        "ships_by_size": ships_by_size, "images_per_second": 3.0, "ship_images": 4, "problems": []})
    write_json(run / "train_summary.json", {"epochs_logged": 40, "train_minutes": 24.0})
    write_json(run / "model" / "config.json", {"encoder": "efficientnet_lite0", "seed": 0})
    write_json(run / "model" / "postprocess.json", {"threshold": 0.7, "min_size": 0, "min_confidence": 0.99})
    record = make_record(run, {"path": "data", "train_images": 7, "test_images": 3}, "python airbus_ships/bench.py",
                         {"average_at_start": [1, 1, 1], "average_at_end": [2, 2, 2], "note": ""},
                         (1500.0, 2600.4), (23.6, 924.0))
    assert list(record) == ["task", "what", "command", "config", "data", "machine", "load", "date_utc", "metrics",
                            "timings"]
    assert record["metrics"]["kaggle_score"] == 0.6 and record["metrics"]["ships_by_size"] == ships_by_size
    assert record["metrics"]["ship_rule"]["threshold"] == 0.7 and record["data"]["test_ship_images"] == 4
    assert record["timings"] == {"epochs": 40, "train_minutes_fit": 24.0, "train_minutes_wall": 25.0,
                                 "test_wall_seconds": 23.6, "test_images_per_second": 3.0,
                                 "peak_memory_mib": {"train": 2600, "test": 924}}
    write_json(tmp_path / "bench.json", record)
    assert strict_json((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(record))


def test_learning_curve_keeps_a_stratified_share_and_the_same_test_split(demo_dir, tmp_path):
    """studies/learning_curve.py: fewer training images, ship / no-ship kept in proportion, the benchmark's test
    split unchanged; every row of a kept image is copied."""
    from airbus_ships.bench import write_split
    from airbus_ships.studies.learning_curve import keep_share

    def images(path):
        frame = pd.read_csv(path)
        return frame.groupby("ImageId")["EncodedPixels"].apply(lambda rles: rles.notna().any())

    full_train, full_test, n_train, n_test = write_split(demo_dir, tmp_path / "full")
    half_train, half_test, _, _ = write_split(demo_dir, tmp_path / "half")
    n_half = keep_share(half_train, demo_dir / "images", 0.5)
    assert half_test.read_bytes() == full_test.read_bytes()
    full, half = images(full_train), images(half_train)
    kept = {has_ships: n - round(n * 0.5) for has_ships, n in full.value_counts().items()}  # per stratum
    assert n_train == len(full) and n_half == len(half) == sum(kept.values())
    assert set(half.index) < set(full.index) and half.value_counts().to_dict() == kept
    rows = pd.read_csv(full_train)
    assert len(pd.read_csv(half_train)) == rows.ImageId.isin(half.index).sum()
    with pytest.raises(ValueError, match="share"):
        keep_share(half_train, demo_dir / "images", 0)


def raising_at_call(n: int, exc, real, calls: list):
    """``real`` (predict_probs), counting its calls in ``calls``, that raises ``exc`` at the ``n``-th."""
    def predict(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise exc
        return real(*args, **kwargs)
    return predict


@pytest.mark.slow
def test_interrupted_run_keeps_its_rows_and_resume_completes_it(demo_dir, trained_run, tmp_path, monkeypatch,
                                                                 capsys):
    """Ctrl-C during the third image: the rows of the first two are in submission.partial.csv; --resume predicts
    only the others and ends with the submission and scores of an uninterrupted run, the partial file removed."""
    from airbus_ships import test as test_script
    common = ["--data", str(demo_dir), "--model", str(trained_run / "model" / "best.keras"), "--overlays", "0",
              "--limit", "6"]
    whole = test_script.main(common + ["--out", str(tmp_path / "whole")])
    real, calls = test_script.predict_probs, []
    monkeypatch.setattr(test_script, "predict_probs", raising_at_call(3, KeyboardInterrupt, real, calls))
    out = tmp_path / "stopped"
    with pytest.raises(SystemExit) as stopped:
        test_script.main(common + ["--out", str(out)])
    assert stopped.value.code == 130
    assert "interrupted: the rows of 2 images are in" in capsys.readouterr().err
    partial = out / "submission.partial.csv"
    with open(partial, newline="") as f:
        kept = list(csv.DictReader(f))
    assert len({r["ImageId"] for r in kept}) == 2 and not (out / "submission.csv").exists()
    assert {r["scored"] for r in kept} == {"1"}  # demo images have ground truth
    calls.clear()
    monkeypatch.setattr(test_script, "predict_probs", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = test_script.main(common + ["--out", str(out), "--resume"])
    assert len(calls) == 4 and resumed["images_predicted"] == 4  # the two done images are not predicted again
    assert read_submission(out / "submission.csv") == read_submission(tmp_path / "whole" / "submission.csv")
    for key in ("kaggle_score", "dice_pixels", "images_scored", "ship_no_ship_accuracy"):
        assert resumed[key] == pytest.approx(whole[key]), key
    assert not partial.exists()


@pytest.mark.slow
def test_rows_are_saved_during_the_run(demo_dir, trained_run, tmp_path, monkeypatch):
    """A run killed without warning (here: an exception test.py does not catch, during the third image) has left
    the rows of every image done on disk (each image's rows are appended as soon as it is predicted)."""
    from airbus_ships import test as test_script

    class Killed(BaseException):
        pass

    monkeypatch.setattr(test_script, "predict_probs", raising_at_call(3, Killed, test_script.predict_probs, []))
    out = tmp_path / "out"
    with pytest.raises(Killed):
        test_script.main(["--data", str(demo_dir), "--model", str(trained_run / "model" / "best.keras"),
                          "--out", str(out), "--overlays", "0", "--limit", "5"])
    with open(out / "submission.partial.csv", newline="") as f:
        assert len({r["ImageId"] for r in csv.DictReader(f)}) == 2
    assert not list(out.glob("*.tmp*"))


def test_auto_prediction_is_whole_image_up_to_1024_squared_then_tiled():
    """--how auto (the default): Kaggle's 768x768 images and anything up to 1024x1024 px in one pass, larger
    images tiled (bounded memory); full / tile as asked; anything else refused."""
    from airbus_ships.inference import resolve_how
    assert resolve_how("auto", (768, 768, 3)) == "full"
    assert resolve_how("auto", (1024, 1024, 3)) == "full"
    assert resolve_how("auto", (1025, 1024, 3)) == "tile"
    assert resolve_how("auto", (4000, 3000, 3)) == "tile"
    assert resolve_how("tile", (768, 768, 3)) == "tile" and resolve_how("full", (4000, 3000, 3)) == "full"
    with pytest.raises(ValueError, match="how must be one of"):
        resolve_how("whole", (768, 768, 3))


def test_rule_chosen_on_other_predictions_is_warned_about(tmp_path, capsys):
    """A ship rule chosen on tiled maps (postprocess.json's "how", e.g. a run trained before 'auto' became the
    default) used with --how auto: a warning saying how to match them; none when they match."""
    import argparse

    from airbus_ships.test import load_rule
    (tmp_path / "postprocess.json").write_text(json.dumps({"threshold": 0.4, "min_size": 80,
                                                           "min_confidence": 0.9, "how": "tile"}))
    args = argparse.Namespace(how="auto", flips=None, threshold=None, min_size=None, min_confidence=None)
    rule, _ = load_rule(tmp_path, args)
    assert (rule.threshold, rule.min_size, rule.min_confidence) == (0.4, 80, 0.9)
    err = capsys.readouterr().err
    assert "chosen on 'tile' predictions" in err and "--calibrate-only --predict-how auto" in err
    load_rule(tmp_path, argparse.Namespace(how="tile", flips=None, threshold=None, min_size=None, min_confidence=None))
    assert "warning" not in capsys.readouterr().err


def test_test_time_flips_follow_the_rule_unless_given(tmp_path, capsys):
    """test.py without --flips / --no-flips predicts as the rule was chosen (postprocess.json's "flips"; a rule
    recorded before flips existed, or none: without); a choice against the rule's is kept and warned about."""
    import argparse

    from airbus_ships.test import load_rule

    def flips_of(given, record):
        (tmp_path / "postprocess.json").write_text(json.dumps({"threshold": 0.6, "min_size": 300,
                                                               "min_confidence": 0.99, "how": "auto", **record}))
        args = argparse.Namespace(how="auto", flips=given, threshold=None, min_size=None, min_confidence=None)
        load_rule(tmp_path, args)
        return args.flips, capsys.readouterr().err

    assert flips_of(None, {"flips": True}) == (True, "")
    assert flips_of(None, {"flips": False}) == (False, "")
    assert flips_of(None, {}) == (False, "")
    assert flips_of(True, {"flips": True}) == (True, "")
    flips, err = flips_of(False, {"flips": True})
    assert flips is False and "chosen on maps with test-time flips and this run predicts without" in err
    flips, err = flips_of(True, {})
    assert flips is True and "chosen on maps without test-time flips and this run predicts with" in err


def test_a_rule_file_of_the_removed_image_gate(tmp_path):
    """postprocess.json of earlier runs holds image_confidence 0 (no gate): it loads as before; a file with a
    gate (never chosen by train.py) is refused with the reason and how to write the rule again."""
    from airbus_ships.inference import ShipRule

    path = tmp_path / "postprocess.json"
    path.write_text(json.dumps({"threshold": 0.7, "min_size": 0, "min_confidence": 0.99, "image_confidence": 0.0}))
    assert ShipRule.load(tmp_path)[0] == ShipRule(0.7, 0, 0.99)
    path.write_text(json.dumps({"threshold": 0.7, "min_size": 0, "min_confidence": 0.9, "image_confidence": 0.99}))
    with pytest.raises(ValueError, match="image gate was removed.*--calibrate-only"):
        ShipRule.load(tmp_path)
