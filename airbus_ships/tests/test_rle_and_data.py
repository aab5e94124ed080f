"""RLE decoding (hand-made Kaggle rows), the mask table checks and the streaming tf.data pipeline."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from airbus_ships.data import SHIP_SEP, check_rle, overlapping_rows, read_mask_table, ship_instances
from airbus_ships.pipeline import make_dataset, tf_rle_decode
from common.io import rle_decode

# "1 3": pixels 1..3 = rows 0..2 of column 0 (column-major, 1-indexed); "770 2": pixel 770 = row 1 of column 1
HAND_MADE = "1 3 770 2"


def test_hand_made_row_decodes_column_major():
    expected = np.zeros((768, 768), np.uint8)
    expected[0:3, 0] = 1
    expected[1:3, 1] = 1
    assert (rle_decode(HAND_MADE) == expected).all()
    assert (tf_rle_decode(tf.constant(HAND_MADE)).numpy() == expected).all()
    # several ships of one image decode to their union in the pipeline, one by one for the metrics
    second = "589823 2"  # the last two pixels: rows 766, 767 of the last column
    union = tf_rle_decode(tf.constant(HAND_MADE + SHIP_SEP + second)).numpy()
    assert union.sum() == 7 and union[767, 767] == 1 and union[766, 767] == 1
    ships = ship_instances(HAND_MADE + SHIP_SEP + second)
    assert len(ships) == 2 and ships[0].sum() == 5 and ships[1].sum() == 2


def test_empty_row_is_an_empty_mask():
    assert tf_rle_decode(tf.constant("")).numpy().sum() == 0
    assert check_rle("") is None


@pytest.mark.parametrize("rle, reason", [
    ("1 3 770", "odd"), ("589820 10", "beyond"), ("1 10 5 3", "overlap"), ("0 3", "below 1"),
    ("1 0", "positive"), ("1 x", "non-integer"),
])
def test_malformed_rle_is_named(rle, reason):
    assert reason in check_rle(rle)


def test_mask_table_reports_bad_rows_and_missing_images(demo_dir, tmp_path, capsys):
    rows = pd.read_csv(demo_dir / "masks.csv", keep_default_na=False)
    first = rows["ImageId"].iloc[0]
    bad = pd.DataFrame({"ImageId": [first, "missing0.jpg"], "EncodedPixels": ["5 5 3", ""]})
    csv = tmp_path / "masks.csv"
    pd.concat([rows, bad]).to_csv(csv, index=False)
    table = read_mask_table(csv, demo_dir / "images")
    err = capsys.readouterr().err
    assert f"{first}: malformed RLE (odd" in err and "missing0.jpg: image file not found" in err
    assert first not in set(table.frame["ImageId"]) and "missing0.jpg" not in set(table.frame["ImageId"])
    assert len(table.frame) == rows["ImageId"].nunique() - 1


def bad_images(demo_dir, folder):
    """A copy of the demo data plus three bad images listed in masks.csv: a truncated JPEG whose header is
    intact, one cut inside its header, and a 300x200 image."""
    from PIL import Image
    shutil.copytree(demo_dir, folder)
    good = sorted(p.name for p in (folder / "images").iterdir())
    data = (folder / "images" / good[0]).read_bytes()
    (folder / "images" / "truncated.jpg").write_bytes(data[:3000])
    (folder / "images" / "cut.jpg").write_bytes(data[:400])
    Image.new("RGB", (300, 200)).save(folder / "images" / "small.jpg")
    with open(folder / "masks.csv", "a") as f:
        f.write("truncated.jpg,\ncut.jpg,\nsmall.jpg,\n")
    return folder


def test_bad_images_are_named_and_left_out_when_the_table_is_read(demo_dir, tmp_path, capsys):
    folder = bad_images(demo_dir, tmp_path / "airbus")
    table = read_mask_table(folder / "masks.csv", folder / "images")
    err = capsys.readouterr().err
    for name, why in (("truncated.jpg", "truncated JPEG (no end-of-image marker)"),
                      ("cut.jpg", "corrupt or truncated image"), ("small.jpg", "image is 300x200, not 768x768")):
        assert f"{folder / 'images' / name}: {why}" in err, name
        assert name not in set(table.frame["ImageId"])
    assert len(table.problems) == 3 and len(table.frame) == len(read_mask_table(demo_dir / "masks.csv",
                                                                                demo_dir / "images").frame)


def test_pipeline_skips_an_image_it_cannot_decode(demo_dir, tmp_path):
    """What the table check cannot see is skipped by the pipeline: a frame of one good image and one truncated
    file (bypassing the check) yields only the good image (768 px crops: the whole image), so every pass met the
    bad file and dropped it."""
    table = read_mask_table(demo_dir / "masks.csv", demo_dir / "images").frame
    good = table[table.n_ships == 0].iloc[:1]
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(Path(good["path"].iloc[0]).read_bytes()[:3000])
    frame = pd.concat([good, good.assign(ImageId="truncated.jpg", path=str(bad))], ignore_index=True)
    ds = make_dataset(frame, batch_size=1, input_size=768, empty_share=None, training=False)
    expected = None
    for x, y in ds.take(6):  # 6 elements: 6 passes over the 2 rows, the bad one met in each
        expected = x.numpy() if expected is None else expected
        assert (x.numpy() == expected).all() and float(tf.reduce_max(y)) == 0


@pytest.mark.parametrize("share, has_ships", [(0.0, True), (1.0, False)])
def test_empty_share_0_and_1_keep_one_kind_of_image(demo_dir, share, has_ships):
    frame = read_mask_table(demo_dir / "masks.csv", demo_dir / "images").frame
    ds = make_dataset(frame, batch_size=8, input_size=128, empty_share=share, ship_crop_prob=1.0, training=False)
    for _, y in ds.take(2):
        assert ((tf.reduce_max(y, axis=[1, 2, 3]).numpy() > 0) == has_ships).all()
    with pytest.raises(ValueError, match="ship-free images only, and there are none"):
        make_dataset(frame[frame.n_ships > 0], batch_size=8, empty_share=1.0)


def test_overlapping_ships_of_one_image_are_reported_with_both_lines(demo_dir, tmp_path, capsys):
    rows = pd.read_csv(demo_dir / "masks.csv", keep_default_na=False)
    empty = rows.loc[rows.EncodedPixels == "", "ImageId"].iloc[0]
    rows = rows[rows.ImageId != empty]
    csv = tmp_path / "masks.csv"
    pd.concat([rows, pd.DataFrame({"ImageId": [empty, empty], "EncodedPixels": ["1000 50", "1020 50"]})]).to_csv(
        csv, index=False)
    n = len(rows)  # the two rows are lines n + 2 and n + 3 (line 1 is the header)
    assert overlapping_rows(["1000 50", "1020 50"]) == (0, 1) and overlapping_rows(["1000 50", "1050 5"]) is None
    table = read_mask_table(csv, demo_dir / "images")
    assert f"{csv}:{n + 2} and line {n + 3}: {empty}: the two ships overlap" in capsys.readouterr().err
    assert empty not in set(table.frame["ImageId"])


def test_crops_are_centred_on_ships(demo_dir):
    frame = read_mask_table(demo_dir / "masks.csv", demo_dir / "images").frame
    ships = frame[frame.n_ships > 0]
    ds = make_dataset(ships, batch_size=8, input_size=128, empty_share=None, ship_crop_prob=1.0, training=False)
    x, y = next(iter(ds))
    assert (tf.reduce_max(y, axis=[1, 2, 3]).numpy() > 0).all()  # every crop holds ship pixels


@pytest.mark.slow
def test_streaming_synthetic_kaggle_table(demo_dir, tmp_path):
    """studies/stream_check.py on 20,000 synthetic rows (Kaggle balance): table and pipeline stay small and fast
    (200k: EXPERIMENTS.md). Run as
    a user would, in a fresh process: its peak memory is the whole process's, which earlier tests in this one
    would inflate."""
    import json

    from airbus_ships.tests.conftest import _run_script
    _run_script("studies/stream_check.py", "--data", demo_dir, "--out", tmp_path, "--rows", 20_000, "--batches", 10,
                "--batch-size", 4, "--train-steps", 0, "--seed", 0)
    result = json.loads((tmp_path / "stream_check.json").read_text())
    assert result["rows_dropped"] == 0
    assert 0.7 < 1 - result["ship_images"] / result["images"] < 0.85  # Kaggle-like empty share
    assert result["peak_rss_mib_pipeline"] < 2048
    assert result["pipeline_batches_per_second"] > 1


def _stream_digest(frame, n_batches: int, **kwargs) -> str:
    import hashlib

    h = hashlib.sha256()
    for x, y in make_dataset(frame, batch_size=4, input_size=128, **kwargs).take(n_batches):
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("training", [True, False])
def test_batches_are_a_function_of_the_seed(demo_dir, training):
    """The same seed gives the same images, crops and augmentation in every run (train.py's training stream and
    its fixed validation batches, which --resume compares its best loss with), although the maps run in
    parallel: the random draws are stateless, seeded by the element's number (random ops called in parallel drew
    in any order before: other batches each time). Another seed gives other batches."""
    import keras
    frame = read_mask_table(demo_dir / "masks.csv", demo_dir / "images").frame
    digests = []
    for seed in (1, 1, 1, 2):
        keras.utils.set_random_seed(0)
        digests.append(_stream_digest(frame, 3, empty_share=0.25, training=training, seed=seed))
    assert digests[0] == digests[1] == digests[2] != digests[3]


def test_start_skips_what_a_resumed_run_has_seen(demo_dir):
    """``start=k * batch`` gives the batches of the uninterrupted stream from batch k on (train.py --resume)."""
    import keras
    frame = read_mask_table(demo_dir / "masks.csv", demo_dir / "images").frame
    keras.utils.set_random_seed(0)
    whole = [x.numpy() for x, _ in make_dataset(frame, batch_size=4, input_size=128, seed=3).take(5)]
    keras.utils.set_random_seed(0)
    rest = [x.numpy() for x, _ in make_dataset(frame, batch_size=4, input_size=128, seed=3, start=3 * 4).take(2)]
    assert all((a == b).all() for a, b in zip(whole[3:], rest))
    assert not (whole[0] == rest[0]).all()


def test_hue_augmentation_turns_the_colours_only():
    """``hue_delta`` changes the crop's colours, never its mask, flips or turns: with the same seed the image
    differs from the one without it by a hue turn only, which keeps each pixel's brightest and darkest channel
    values (HSV's value and saturation), and the mask is the same."""
    import tensorflow as tf

    from airbus_ships.pipeline import augment

    rng = np.random.default_rng(0)
    image = tf.constant(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    mask = tf.constant(rng.integers(0, 2, (32, 32, 1), dtype=np.uint8))
    seed = tf.constant([3, 4], tf.int64)
    plain_x, plain_y = augment(image, mask, seed)
    hue_x, hue_y = augment(image, mask, seed, hue_delta=0.3)
    np.testing.assert_array_equal(plain_y.numpy(), hue_y.numpy())
    plain, hue = plain_x.numpy().astype(int), hue_x.numpy().astype(int)
    assert np.abs(plain - hue).mean() > 5  # colours moved
    for extreme in (np.max, np.min):  # the same pixels in the same place, only turned round the colour circle
        assert np.abs(extreme(plain, -1) - extreme(hue, -1)).max() <= 1  # rounding to uint8
