"""Kaggle Airbus data: find the files, read and check the mask table, split it, stream it with ``tf.data``.

On-disk layouts accepted (``--data DIR``):

* Kaggle:        ``DIR/train_v2/*.jpg`` + ``DIR/train_ship_segmentations_v2.csv``
* this project:  ``DIR/images/*.jpg``   + ``DIR/masks.csv``

The mask table has one row per ship (``ImageId,EncodedPixels``; 1-indexed, column-major runs over a 768x768
image) and one row with an empty ``EncodedPixels`` per image without ships. It is read once into a small
per-image table of RLE *strings* (about 100 MB for the full 231,723-row Kaggle CSV); masks are decoded on the
fly, inside the ``tf.data`` graph, one image at a time: the pipeline never holds more masks than the images
it is preparing.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

SIZE = 768  # Kaggle image side; RLE pixel numbers refer to a SIZE x SIZE image
LOAD_WORKERS = min(4, os.cpu_count() or 1)  # parallel JPEG + RLE decodes in the training pipeline
SHIP_SEP = ";"  # separates the RLE strings of the ships of one image in MaskTable.frame["rle"]

LAYOUTS = (("images", "masks.csv"), ("train_v2", "train_ship_segmentations_v2.csv"))


def find_layout(data: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(images_dir, csv_path)`` of a data folder (csv_path None when the folder holds no mask table).

    A folder of images without a sub-folder is accepted as an image folder (test.py on new images).
    """
    data = Path(data)
    for images, csv in LAYOUTS:
        if (data / images).is_dir():
            return data / images, (data / csv if (data / csv).is_file() else None)
    if data.is_dir():
        return data, None
    raise FileNotFoundError(f"{data}: data folder not found (expected {LAYOUTS[0][0]}/ + {LAYOUTS[0][1]} "
                            f"or {LAYOUTS[1][0]}/ + {LAYOUTS[1][1]})")


def check_rle(rle: str, size: int = SIZE) -> str | None:
    """Why a Kaggle RLE string is malformed, or None when it is valid (empty strings are valid).

    Same rules as :func:`common.io.rle_decode`, without allocating the mask (fast on 200k rows).
    """
    if not rle.strip():
        return None
    try:
        v = np.array(rle.split(), dtype=np.int64)
    except ValueError:
        return "non-integer values"
    if v.size % 2:
        return f"odd number of values ({v.size})"
    starts, lengths = v[0::2], v[1::2]
    if (starts < 1).any():
        return "start below 1 (starts are 1-indexed)"
    if (lengths <= 0).any():
        return "run length not positive"
    ends = starts - 1 + lengths
    if ends.max() > size * size:
        return f"run ends at pixel {int(ends.max())}, beyond {size}x{size}"
    if (starts[1:] - 1 < ends[:-1]).any():
        return "runs overlap or are not increasing"
    return None


def overlapping_rows(rles: list[str]) -> tuple[int, int] | None:
    """Positions ``(i, j)`` in ``rles`` of two ships of one image whose pixels overlap, or None.

    Each string must pass :func:`check_rle` (runs increasing within a row); :func:`check_rle` sees one row only,
    this compares the rows of one image with each other (Kaggle's ships never overlap).
    """
    starts, ends, owner = [], [], []
    for i, rle in enumerate(rles):
        v = np.array(rle.split(), dtype=np.int64)
        starts.append(v[0::2])
        ends.append(v[0::2] + v[1::2] - 1)
        owner.append(np.full(v.size // 2, i))
    if len(starts) < 2:
        return None
    starts, ends, owner = np.concatenate(starts), np.concatenate(ends), np.concatenate(owner)
    order = np.argsort(starts, kind="stable")
    starts, ends, owner = starts[order], ends[order], owner[order]
    reach = np.maximum.accumulate(ends)          # the furthest pixel covered by any run so far
    hit = np.nonzero(starts[1:] <= reach[:-1])[0]  # a run starting inside an earlier one
    if not hit.size:
        return None
    k = hit[0] + 1
    earlier = int(owner[:k][np.nonzero(ends[:k] >= starts[k])[0][0]])
    return tuple(sorted((earlier, int(owner[k]))))


def image_problem(path: str | os.PathLike, size: int = SIZE) -> str | None:
    """Why an image file cannot be a training image, or None: a cheap check, no decoding.

    Reads the header (Pillow: format and size; unreadable or not ``size x size``) and, for a JPEG, its last
    kilobyte (a truncated file has no end-of-image marker). A JPEG damaged inside its data passes: libjpeg, in
    TensorFlow and Pillow alike, decodes it with a "Corrupt JPEG data" warning and no error (checked with 2,000
    zeroed, random or removed bytes in the middle of a real image), so it trains as garbled pixels, unnamed.
    """
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            fmt, (w, h) = img.format, img.size
        if (w, h) != (size, size):
            return f"image is {w}x{h}, not {size}x{size}"
        if fmt == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 1024))
                if b"\xff\xd9" not in f.read():
                    return "truncated JPEG (no end-of-image marker)"
    except UnidentifiedImageError:
        return "not a readable image (unknown or unsupported format)"
    except (OSError, SyntaxError, ValueError) as err:
        return f"corrupt or truncated image ({err})"
    return None


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


@dataclass
class MaskTable:
    """Per-image masks as RLE strings: ``frame`` has columns ImageId, path, rle (the RLE strings of the image's
    ships joined by ``SHIP_SEP``; "" for no ship), n_ships, ship_pixels. ``problems`` lists the rows dropped."""

    frame: pd.DataFrame
    problems: list[str]


def read_mask_table(csv_path: str | os.PathLike, images_dir: str | os.PathLike,
                    check_files: bool = True, max_report: int = 20, check_images: bool = True) -> MaskTable:
    """Read a Kaggle mask CSV, check every row, drop (and report) what cannot be used.

    Dropped, each reported with its CSV line or file and the reason: rows whose RLE is malformed (odd length,
    non-integer, out of range, overlapping or unordered runs; the whole image goes, as its mask would be wrong),
    images two of whose ship rows overlap each other (both lines named), rows naming an image file that does not
    exist and, with ``check_images``, images whose header is unreadable, that are not 768x768 or are truncated
    JPEGs (:func:`image_problem`; about 0.1 ms an image, in 8 threads). Only the first ``max_report`` problems
    are printed; ``MaskTable.problems`` holds them all.
    """
    csv_path, images_dir = Path(csv_path), Path(images_dir)
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{csv_path}: cannot read the mask table ({err})") from None
    if not {"ImageId", "EncodedPixels"} <= set(df.columns):
        raise ValueError(f"{csv_path}: columns ImageId,EncodedPixels expected, found {list(df.columns)}")
    df["EncodedPixels"] = df["EncodedPixels"].str.strip()
    problems: list[str] = []
    bad_ids: set[str] = set()
    for i, (image_id, rle) in enumerate(zip(df["ImageId"], df["EncodedPixels"])):
        why = check_rle(rle)
        if why:
            problems.append(f"{csv_path}:{i + 2}: {image_id}: malformed RLE ({why}); image skipped")
            bad_ids.add(image_id)
    problems += _overlapping_ships(df, bad_ids, csv_path)
    if check_files:
        present = set(os.listdir(images_dir)) if images_dir.is_dir() else set()
        for image_id in df["ImageId"].unique():
            if image_id not in present:
                problems.append(f"{csv_path}: {image_id}: image file not found in {images_dir}; rows skipped")
                bad_ids.add(image_id)
    if check_images:
        ids = [i for i in df["ImageId"].unique() if i not in bad_ids]
        with ThreadPoolExecutor(8) as pool:  # file opens overlap; the header parse is short
            whys = pool.map(image_problem, [images_dir / i for i in ids])
            for image_id, why in zip(ids, whys):
                if why:
                    problems.append(f"{images_dir / image_id}: {why}; image skipped")
                    bad_ids.add(image_id)
    df = df[~df["ImageId"].isin(bad_ids)]
    ships = df[df["EncodedPixels"] != ""]
    lengths = ships["EncodedPixels"].map(lambda r: int(np.array(r.split()[1::2], np.int64).sum()))
    per_image = pd.DataFrame({"ImageId": pd.unique(df["ImageId"])})
    grouped = ships.groupby("ImageId", sort=False)
    per_image["rle"] = per_image["ImageId"].map(grouped["EncodedPixels"].agg(SHIP_SEP.join)).fillna("")
    per_image["n_ships"] = per_image["ImageId"].map(grouped.size()).fillna(0).astype(int)
    per_image["ship_pixels"] = per_image["ImageId"].map(lengths.groupby(ships["ImageId"]).sum()).fillna(0)
    per_image["ship_pixels"] = per_image["ship_pixels"].astype(int)
    per_image["path"] = [str(images_dir / i) for i in per_image["ImageId"]]
    for p in problems[:max_report]:
        _warn(p)
    if len(problems) > max_report:
        _warn(f"... and {len(problems) - max_report} more problems in {csv_path}")
    return MaskTable(per_image, problems)


def _overlapping_ships(df: pd.DataFrame, bad_ids: set[str], csv_path: Path) -> list[str]:
    """Problems for images (not yet in ``bad_ids``, which this extends) two of whose ship rows overlap."""
    ships = df[(df["EncodedPixels"] != "") & ~df["ImageId"].isin(bad_ids)]
    several = ships[ships["ImageId"].duplicated(keep=False)]
    problems = []
    for image_id, rows in several.groupby("ImageId", sort=False):
        pair = overlapping_rows(rows["EncodedPixels"].tolist())
        if pair:
            a, b = (int(rows.index[k]) + 2 for k in pair)  # CSV line numbers (header is line 1)
            problems.append(f"{csv_path}:{a} and line {b}: {image_id}: the two ships overlap; image skipped")
            bad_ids.add(image_id)
    return problems


def ship_instances(rle: str, size: int = SIZE) -> list[np.ndarray]:
    """The ships of one image as ``(size, size)`` bool masks, from a ``MaskTable.frame["rle"]`` value."""
    from common.io import rle_decode
    return [rle_decode(r, (size, size)).astype(bool) for r in rle.split(SHIP_SEP) if r]


def split_by_image(frame: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split images (not ship rows) into train/validation, stratified by ship / no ship, reproducibly."""
    if val_fraction <= 0:
        return frame, frame.iloc[:0]
    rng = np.random.default_rng(seed)
    val_idx = []
    for _, group in frame.groupby(frame["n_ships"] > 0):
        n_val = int(round(len(group) * val_fraction))
        val_idx += list(rng.choice(group.index.to_numpy(), size=n_val, replace=False))
    val = frame.loc[sorted(val_idx)]
    return frame.drop(index=val.index), val


# ------------------------------------------------------------------------------------------------ tf.data
def _rle_runs(rle: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(0-based starts, lengths)`` int64 of the runs of one checked RLE string (``"start length ..."``)."""
    values = tf.strings.to_number(tf.strings.split(rle), tf.int64)
    return values[0::2] - 1, values[1::2]


def tf_rle_decode(rle: tf.Tensor, size: int = SIZE) -> tf.Tensor:
    """Decode checked Kaggle RLE strings (several ships joined by ``SHIP_SEP``) to one ``(size, size)`` uint8
    mask in the TF graph."""
    starts, lengths = _rle_runs(tf.strings.regex_replace(rle, SHIP_SEP, " "))
    index = tf.ragged.range(starts, starts + lengths).flat_values
    flat = tf.scatter_nd(index[:, None], tf.ones_like(index, tf.uint8), [size * size])
    return tf.transpose(tf.reshape(tf.minimum(flat, 1), [size, size]))  # column-major numbering


def load_example(path: tf.Tensor, rle: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Read one JPEG and decode its mask: ``(768, 768, 3)`` uint8 and ``(768, 768, 1)`` uint8.

    :func:`read_mask_table` has already dropped (and named) the images whose header, size or end it found
    wrong; a file that still fails to decode raises here and the pipeline's ``ignore_errors`` skips it (its log
    line, hidden by ``TF_CPP_MIN_LOG_LEVEL=2``, does not name the file); one damaged inside its data decodes.
    """
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    tf.debugging.assert_equal(tf.shape(image)[:2], [SIZE, SIZE],
                              message=tf.strings.join([path, ": image is not 768x768; skipped"]))
    image = tf.ensure_shape(image, [SIZE, SIZE, 3])
    return image, tf_rle_decode(rle)[..., None]


def random_ship_pixel(rle: tf.Tensor, seed: tf.Tensor, size: int = SIZE) -> tf.Tensor:
    """``(row, col)`` int64 of a random pixel of one ship, the ship drawn uniformly among the image's ships (a
    100-pixel ship as often as a 5,000-pixel one); ``(-1, -1)`` for an image without ships. Reads the RLE
    string only (no mask). ``seed``: a stateless ``[2]`` seed (the draw is a function of it)."""
    ships = tf.strings.split(rle, SHIP_SEP)
    ships = tf.boolean_mask(ships, tf.strings.length(ships) > 0)
    n = tf.size(ships)
    s_ship, s_pixel = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

    def pick():
        starts, lengths = _rle_runs(ships[tf.random.stateless_uniform([], s_ship, 0, n, dtype=tf.int32)])
        ends = tf.cumsum(lengths)                       # a pixel uniformly within the ship: runs by their length
        k = tf.random.stateless_uniform([], s_pixel, 0, ends[-1], dtype=tf.int64)
        run = tf.searchsorted(ends, k[None], side="right")[0]
        pixel = starts[run] + k - (ends[run] - lengths[run])
        return tf.stack([pixel % size, pixel // size])  # column-major numbering

    return tf.cond(n > 0, pick, lambda: tf.constant([-1, -1], tf.int64))


def crop_around_ships(image, mask, crop: int, ship_prob: float, seed: tf.Tensor, centre=None):
    """A ``crop x crop`` window: with probability ``ship_prob`` (and when there is a ship) centred, with a random
    offset, on ``centre`` (a ``(row, col)`` ship pixel, e.g. from :func:`random_ship_pixel`) or, without one, on
    a random ship pixel of ``mask`` (large ships then dominate); otherwise anywhere. Keeps ship pixels at full
    resolution. ``seed``: a stateless ``[2]`` seed (the window is a function of it)."""
    if centre is None:
        ship_pixels = tf.where(mask[..., 0] > 0)
        n = tf.shape(ship_pixels, out_type=tf.int64)[0]
    else:  # one candidate, valid unless (-1, -1)
        ship_pixels, n = centre[None], tf.cast(centre[0] >= 0, tf.int64)
    s_on, s_pixel, s_jitter, s_anywhere = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    on_ship = tf.logical_and(n > 0, tf.random.stateless_uniform([], s_on) < ship_prob)

    def centred():
        c = ship_pixels[tf.random.stateless_uniform([], s_pixel, 0, tf.maximum(n, 1), dtype=tf.int64)]
        jitter = tf.random.stateless_uniform([2], s_jitter, -crop // 3, crop // 3 + 1, dtype=tf.int64)
        return tf.clip_by_value(c + jitter - crop // 2, 0, SIZE - crop)

    def anywhere():
        return tf.random.stateless_uniform([2], s_anywhere, 0, SIZE - crop + 1, dtype=tf.int64)

    y0x0 = tf.cond(on_ship, centred, anywhere)
    y0, x0 = y0x0[0], y0x0[1]
    return image[y0:y0 + crop, x0:x0 + crop], mask[y0:y0 + crop, x0:x0 + crop]


def downscale(image, mask, size: int):
    """Whole image and mask downscaled to ``size x size`` (area averaging; the mask becomes a soft target)."""
    image = tf.cast(tf.round(tf.image.resize(tf.cast(image, tf.float32), [size, size], method="area")), tf.uint8)
    mask = tf.image.resize(tf.cast(mask, tf.float32), [size, size], method="area")
    return image, mask


def augment(image, mask, seed: tf.Tensor):
    """Random flips, 90-degree rotations and light brightness / contrast / saturation changes, a function of the
    stateless ``[2]`` ``seed``."""
    s_rot, s_flip, s_bright, s_contrast, s_sat = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    k = tf.random.stateless_uniform([], s_rot, 0, 4, dtype=tf.int32)
    image, mask = tf.image.rot90(image, k), tf.image.rot90(mask, k)
    flip = tf.random.stateless_uniform([], s_flip) < 0.5
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    mask = tf.cond(flip, lambda: tf.image.flip_left_right(mask), lambda: mask)
    x = tf.cast(image, tf.float32) / 255.0
    x = tf.image.stateless_random_brightness(x, 0.08, s_bright)
    x = tf.image.stateless_random_contrast(x, 0.85, 1.15, s_contrast)
    x = tf.image.stateless_random_saturation(x, 0.85, 1.15, s_sat)
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8), mask


def element_seeds(seed: int, index: tf.Tensor) -> tf.Tensor:
    """``(3, 2)`` stateless seeds of stream element ``index`` (ship pick, crop, augmentation): the element's
    random choices depend on ``(seed, index)`` only, not on which parallel call draws first."""
    base = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), index)
    return tf.random.experimental.stateless_split(base, 3)


def _stream(frame: pd.DataFrame, seed: int) -> tf.data.Dataset:
    """Endless ``(path, rle)`` strings of ``frame`` in a new random order every pass.

    The shuffle buffer holds row numbers (8 bytes each), not the strings: 200,000 rows cost 1.6 MB. The strings
    go to TensorFlow as a list (a fixed-width numpy ``str`` array would pad every RLE to the longest one:
    gigabytes on the Kaggle CSV).
    """
    paths, rles = tf.constant(frame["path"].tolist()), tf.constant(frame["rle"].tolist())
    order = tf.data.Dataset.range(len(frame)).shuffle(len(frame), seed=seed, reshuffle_each_iteration=True)
    return order.repeat().map(lambda i: (tf.gather(paths, i), tf.gather(rles, i)))


def _balanced_stream(frame: pd.DataFrame, empty_share: float | None, seed: int) -> tf.data.Dataset:
    """``(path, rle)`` stream with ``empty_share`` ship-free images: 0 -> ship images only, 1 -> ship-free images
    only, None -> the data's own share. A share asks for images the frame lacks: ValueError for 0 and 1; in
    between, a warning, and the images there are."""
    if empty_share is None:
        return _stream(frame, seed)
    if not 0.0 <= empty_share <= 1.0:
        raise ValueError(f"empty_share must be within 0..1, got {empty_share}")
    has_ship = frame["n_ships"] > 0
    parts = [(frame[has_ship], 1.0 - empty_share, "ship"), (frame[~has_ship], empty_share, "ship-free")]
    wanted = [(f, w, kind) for f, w, kind in parts if w > 0]
    for f, w, kind in wanted:
        if f.empty:
            if len(wanted) == 1:
                raise ValueError(f"empty_share {empty_share:g} asks for {kind} images only, and there are none")
            _warn(f"empty_share {empty_share:g}: no {kind} images in the training data; sampling the others only")
    wanted = [(f, w) for f, w, _ in wanted if not f.empty]
    if len(wanted) == 1:
        return _stream(wanted[0][0], seed)
    return tf.data.Dataset.sample_from_datasets([_stream(f, seed + i) for i, (f, _) in enumerate(wanted)],
                                                weights=[w for _, w in wanted], seed=seed)


def make_dataset(frame: pd.DataFrame, batch_size: int, input_size: int = 256, mode: str = "crop",
                 empty_share: float | None = 0.25, ship_crop_prob: float = 0.8, training: bool = True,
                 seed: int = 0, ship_sampling: str = "pixel", start: int = 0) -> tf.data.Dataset:
    """Endless batches ``((B, s, s, 3) uint8 images, (B, s, s, 1) float32 masks)`` of ``frame``'s images.

    The stream is a function of ``seed`` (and TensorFlow's global seed, which the shuffles use): the order of the
    images, and every crop and augmentation, whose random draws are stateless, seeded by ``(seed, element
    number)`` (:func:`element_seeds`), so the parallel maps give the same batches whichever call runs first.

    Args:
        mode: "crop" (full-resolution ``input_size`` crops, biased to ships by ``ship_crop_prob``) or
            "resize" (whole image downscaled to ``input_size``).
        empty_share: share of sampled images without ships: 0 ship images only, 1 ship-free images only, None
            the data's own share.
        ship_sampling: what a ship-centred crop is centred on: "pixel" (a random ship pixel: large ships more
            often) or "instance" (a ship drawn uniformly, then a pixel of it: small ships as often as large ones).
        training: augment (flips, turns, colour); otherwise images are only cropped or resized.
        start: elements of the stream to skip before the first batch, without reading them (``--resume``: the
            images this pipeline fed the stopped run, see ``train.make_datasets``, so a resumed run sees what the
            uninterrupted one would have seen; an image dropped as unreadable shifts it by one).
    """
    if ship_sampling not in ("instance", "pixel"):
        raise ValueError(f"ship_sampling must be 'instance' or 'pixel', got {ship_sampling!r}")
    if mode not in ("crop", "resize"):
        raise ValueError(f"mode must be 'crop' or 'resize', got {mode!r}")
    # (index, (path, rle)) -> (path, rle, seeds); skipping strings is cheap: nothing is decoded before the load map
    ds = _balanced_stream(frame, empty_share, seed).enumerate().skip(start)
    ds = ds.map(lambda i, row: (*row, element_seeds(seed, i)))

    def load(path, rle, seeds):
        """(image, mask, seeds), plus the crop centre (row, col) of a uniformly drawn ship for "instance"."""
        if ship_sampling == "instance":
            return (*load_example(path, rle), seeds, random_ship_pixel(rle, seeds[0]))
        return (*load_example(path, rle), seeds)

    def shape(image, mask, seeds, *centre):
        if mode == "resize":
            image, mask = downscale(image, mask, input_size)
        else:
            image, mask = crop_around_ships(image, mask, input_size, ship_crop_prob, seeds[1], *centre)
        if training:
            image, mask = augment(image, mask, seeds[2])
        return image, tf.cast(mask, tf.float32)

    # full 768x768 images are decoded by at most LOAD_WORKERS calls at once (bounded memory; far faster than
    # training consumes, see README); the crops and augmentation after them are cheap. Ordered maps: the batches
    # are the same every run.
    ds = ds.map(load, num_parallel_calls=LOAD_WORKERS)
    ds = ds.ignore_errors(log_warning=True)
    ds = ds.map(shape, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)
