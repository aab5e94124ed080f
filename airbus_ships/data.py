"""Kaggle Airbus data: find the files, read and check the mask table, split it by image (numpy / pandas only;
``pipeline.py`` streams the split with ``tf.data``).

On-disk layouts accepted (``--data DIR``):

* Kaggle:        ``DIR/train_v2/*.jpg`` + ``DIR/train_ship_segmentations_v2.csv``
* this project:  ``DIR/images/*.jpg``   + ``DIR/masks.csv``

The mask table has one row per ship (``ImageId,EncodedPixels``; 1-indexed, column-major runs over a 768x768
image) and one row with an empty ``EncodedPixels`` per image without ships. It is read once into a small
per-image table of RLE *strings* (about 100 MB for the full 231,723-row Kaggle CSV); ``pipeline.py`` decodes
the masks on the fly, one image at a time.
"""
from __future__ import annotations

import csv
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.io import atomic_write, rle_decode

if TYPE_CHECKING:  # pandas is imported by the functions that use it: --help of the scripts stays fast
    import pandas as pd

SIZE = 768  # Kaggle image side; RLE pixel numbers refer to a SIZE x SIZE image
SHIP_SEP = ";"  # separates the RLE strings of the ships of one image in MaskTable.frame["rle"]

LAYOUTS = (("images", "masks.csv"), ("train_v2", "train_ship_segmentations_v2.csv"))


def find_layout(data: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(images_dir, csv_path)`` of a data folder (csv_path None when the folder holds no mask table).

    A folder of images without a sub-folder is accepted as an image folder (test.py on new images).
    """
    data = Path(data)
    for images, table in LAYOUTS:
        if (data / images).is_dir():
            return data / images, (data / table if (data / table).is_file() else None)
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


def entry_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is no image file at all (missing, a dead link, a folder, empty), worded as
    :func:`common.io.read_rgb` words it, or None."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            return f"symbolic link to a file that does not exist ({os.readlink(path)}): file not found"
        return "file not found"
    if path.is_dir():
        return "is a folder, not an image file"
    if path.stat().st_size == 0:
        return "file is empty (0 bytes)"
    return None


def image_problem(path: str | os.PathLike, size: int = SIZE) -> str | None:
    """Why an image file cannot be a training image, or None: a cheap check, no decoding.

    Reads the header (Pillow: format, size and EXIF orientation; unreadable, not ``size x size``, or stored
    turned: the training pipeline reads the pixels as stored while test.py turns them upright) and, for a JPEG or
    a PNG, its last kilobyte (a truncated file has no end-of-image marker or IEND chunk). A JPEG damaged inside
    its data passes: libjpeg, in TensorFlow and Pillow alike, decodes it with a "Corrupt JPEG data" warning and
    no error (checked with 2,000 zeroed, random or removed bytes in the middle of a real image), so it trains as
    garbled pixels, unnamed.
    """
    from PIL import Image, UnidentifiedImageError
    why = entry_problem(path)
    if why:
        return why
    try:
        with Image.open(path) as img:
            fmt, (w, h) = img.format, img.size
            if (w, h) != (size, size):
                return f"image is {w}x{h}, not {size}x{size}"
            orientation = img.getexif().get(0x0112, 1)
        if orientation not in (0, 1):
            return (f"EXIF orientation {orientation} (stored turned): training reads the pixels as stored, "
                    "test.py turns them upright; save the image upright")
        ends = {"JPEG": (b"\xff\xd9", "truncated JPEG (no end-of-image marker)"),
                "PNG": (b"IEND", "truncated PNG (no IEND chunk)")}
        if fmt in ends:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 1024))
                if ends[fmt][0] not in f.read():
                    return ends[fmt][1]
    except UnidentifiedImageError:
        return "not a readable image (unknown or unsupported format)"
    except (OSError, SyntaxError, ValueError) as err:
        return f"corrupt or truncated image ({err})"
    return None


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


MASK_COLUMNS = ("ImageId", "EncodedPixels")


def read_mask_csv(csv_path: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """The rows of a Kaggle mask table, for train.py and test.py alike: a frame of columns ``line`` (the CSV
    line, for messages), ``ImageId`` and ``EncodedPixels`` (stripped), and the problems found.

    UTF-8 with or without a byte-order mark (Excel writes one), any line ending; the header names the two
    columns, in any order, among others (ignored). Blank lines are skipped; a row without an ImageId is
    reported and skipped; an image with an empty row (no ship) besides ship rows is reported and taken as a
    ship image. Raises ValueError, in one line naming the file, when the file cannot be read as such a table.
    """
    import pandas as pd

    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [cell.strip() for cell in next(reader, [])]
            if not set(MASK_COLUMNS) <= set(header):
                shown = ",".join(header)
                shown = repr(shown[:60] + "..." if len(shown) > 60 else shown) if header else "an empty file"
                raise ValueError(f"{csv_path}: the first line must be the header {','.join(MASK_COLUMNS)}; found "
                                 f"{shown}" + (" (a table without its header?)" if header and "." in header[0]
                                               else ""))
            at = [header.index(c) for c in MASK_COLUMNS]
            lines, ids, rles, problems = [], [], [], []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # a blank line
                image_id, rle = ((row[k].strip() if k < len(row) else "") for k in at)
                if not image_id:
                    problems.append(f"{csv_path}:{reader.line_num}: no ImageId; row skipped")
                    continue
                lines.append(reader.line_num)
                ids.append(image_id)
                rles.append(rle)
    except OSError as err:
        raise ValueError(f"{csv_path}: cannot read the mask table ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{csv_path}: not UTF-8 text (byte {err.start}: {err.reason}); save the table as "
                         "UTF-8 CSV") from None
    except csv.Error as err:
        raise ValueError(f"{csv_path}:{reader.line_num}: not a CSV table ({err})") from None
    frame = pd.DataFrame({"line": lines, "ImageId": ids, "EncodedPixels": rles})
    has_ship = set(frame.loc[frame["EncodedPixels"] != "", "ImageId"])
    mixed = frame[(frame["EncodedPixels"] == "") & frame["ImageId"].isin(has_ship)]
    for line, image_id in zip(mixed["line"], mixed["ImageId"]):
        problems.append(f"{csv_path}:{line}: {image_id}: an empty row (no ship) besides ship rows; taken as a ship "
                        "image (its ship rows kept)")
    return frame, problems


@dataclass
class MaskTable:
    """Per-image masks as RLE strings: ``frame`` has columns ImageId, path, rle (the RLE strings of the image's
    ships joined by ``SHIP_SEP``; "" for no ship), n_ships, ship_pixels. ``problems`` lists the rows dropped."""

    frame: pd.DataFrame
    problems: list[str]


def read_mask_table(csv_path: str | os.PathLike, images_dir: str | os.PathLike,
                    check_files: bool = True, max_report: int = 20, check_images: bool = True) -> MaskTable:
    """Read a Kaggle mask CSV (:func:`read_mask_csv`), check every row, drop (and report) what cannot be used.

    Dropped, each reported with its CSV line or file and the reason: rows whose RLE is malformed (odd length,
    non-integer, out of range, overlapping or unordered runs; the whole image goes, as its mask would be wrong),
    images two of whose ship rows overlap each other (both lines named), rows naming an image file that does not
    exist or is no image file (a dead link, a folder, an empty file: :func:`entry_problem`) and, with
    ``check_images``, images whose header is unreadable, that are not 768x768, stored turned (EXIF) or are
    truncated JPEG or PNG files (:func:`image_problem`; about 0.1 ms an image, in 8 threads). Only the first
    ``max_report`` problems are printed; ``MaskTable.problems`` holds them all. ValueError (one line naming the
    file) when the table cannot be read.
    """
    import pandas as pd

    csv_path, images_dir = Path(csv_path), Path(images_dir)
    df, problems = read_mask_csv(csv_path)  # ValueError when unreadable: the message names the file
    bad_ids: set[str] = set()
    for line, image_id, rle in zip(df["line"], df["ImageId"], df["EncodedPixels"]):
        why = check_rle(rle)
        if why:
            problems.append(f"{csv_path}:{line}: {image_id}: malformed RLE ({why}); image skipped")
            bad_ids.add(image_id)
    problems += _overlapping_ships(df, bad_ids, csv_path)
    if check_files:
        present = set(os.listdir(images_dir)) if images_dir.is_dir() else set()
        for image_id in df["ImageId"].unique():
            if image_id not in present:
                problems.append(f"{csv_path}: {image_id}: image file not found in {images_dir}; rows skipped")
                bad_ids.add(image_id)
            elif why := entry_problem(images_dir / image_id):  # a dead link, a folder, an empty file
                problems.append(f"{images_dir / image_id}: {why}; image skipped")
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
            a, b = (int(rows["line"].iloc[k]) for k in pair)
            problems.append(f"{csv_path}:{a} and line {b}: {image_id}: the two ships overlap; image skipped")
            bad_ids.add(image_id)
    return problems


def ship_instances(rle: str, size: int = SIZE) -> list[np.ndarray]:
    """The ships of one image as ``(size, size)`` bool masks, from a ``MaskTable.frame["rle"]`` value."""
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


SPLIT_FILE = "split.csv"              # in a run folder: ImageId, subset (train / val); test.py --split reads it
PROBLEMS_FILE = "data_problems.txt"   # in a run folder: every CSV row / image left out, one per line


def split_table(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """``ImageId, subset`` rows: the training images, then the validation images."""
    import pandas as pd

    return pd.DataFrame({"ImageId": list(train["ImageId"]) + list(val["ImageId"]),
                         "subset": ["train"] * len(train) + ["val"] * len(val)})


def write_split(run_dir: Path, train: pd.DataFrame, val: pd.DataFrame, problems: list[str]) -> None:
    """``split.csv`` (which image is in which subset; test.py --split) and ``data_problems.txt`` (all of them,
    not only the first ones printed)."""
    with atomic_write(run_dir / SPLIT_FILE, "w", newline="") as f:
        split_table(train, val).to_csv(f, index=False)
    if problems:
        with atomic_write(run_dir / PROBLEMS_FILE, "w") as f:
            f.write("\n".join(problems) + "\n")
    else:  # none this time: no stale list from an earlier run into the same folder
        (run_dir / PROBLEMS_FILE).unlink(missing_ok=True)


def load_split(cfg, continuing: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``(train, val, problems)`` for train.py's settings ``cfg`` (``data``, ``csv``, ``check_images``,
    ``val_fraction``, ``seed``, ``out``): the checked mask table split by image, exiting with a message a user
    can act on when there is none; a ``continuing`` run must get the split it was trained with (the
    ``split.csv`` in ``cfg.out``)."""
    import pandas as pd

    try:
        images_dir, csv_path = find_layout(cfg.data)
    except FileNotFoundError as err:  # the message names the folder and the layouts expected
        sys.exit(str(err))
    csv_path = Path(cfg.csv) if cfg.csv else csv_path
    if csv_path is None:
        sys.exit(f"{cfg.data}: no mask table found (masks.csv or train_ship_segmentations_v2.csv); give --csv")
    start = time.time()
    try:
        table = read_mask_table(csv_path, images_dir, check_images=cfg.check_images)
    except ValueError as err:  # unreadable CSV or wrong columns: the message names the file and the reason
        sys.exit(str(err))
    train, val = split_by_image(table.frame, cfg.val_fraction, cfg.seed)
    if train.empty or val.empty:
        sys.exit(f"{csv_path}: {len(train)} training / {len(val)} validation images: not enough usable images")
    print(f"data: {len(table.frame)} images ({int((table.frame.n_ships > 0).sum())} with ships) from {csv_path}; "
          f"train {len(train)}, val {len(val)}; {len(table.problems)} problem(s), their rows / images skipped"
          f"{' (all in ' + str(Path(cfg.out) / PROBLEMS_FILE) + ')' if table.problems else ''}; "
          f"read{' and checked' if cfg.check_images else ''} and split in {time.time() - start:.1f} s")
    saved = Path(cfg.out) / SPLIT_FILE
    if continuing and saved.is_file():
        before = pd.read_csv(saved, dtype=str, keep_default_na=False)
        now = split_table(train, val)
        if sorted(map(tuple, before.values)) != sorted(map(tuple, now.values)):
            sys.exit(f"{saved}: this run's train / validation split differs from the one computed now from "
                     f"{csv_path} (images added, removed or skipped since?); continue it on the same data")
    return train, val, table.problems
