"""Image, mask and Kaggle-RLE input/output, plus atomic file writes.

numpy + Pillow only: nothing here imports torch or tensorflow.

Conventions
-----------
* Images are returned as ``(H, W, 3)`` ``uint8`` RGB arrays, whatever the file holds (JPEG, PNG, RGBA,
  grayscale, palette, 16-bit, EXIF-rotated).
* Masks are returned as ``(H, W)`` ``uint8`` arrays whose values come from an explicit mapping of the raw
  file values (e.g. ``{0: 1, 255: 0}`` for "0 = building, 255 = background").
* An image is decoded only when its header declares at most :func:`max_pixels` pixels (200 Mpx unless the
  ``VISION_MAX_PIXELS`` environment variable says otherwise): a 200 KB PNG can declare 40000 x 40000 pixels
  and take gigabytes to decode.
* Every read error is an :class:`ImageReadError` whose message starts with the file path, so that a user can
  act on it, and a batch loop can catch it, report it and carry on.
* Every write goes to a temporary file in the target folder first and is renamed into place, so a crash
  never leaves a half-written output behind.
* JSON is written strictly (:func:`write_json`, :func:`dumps_json`): an undefined metric (NaN, +-inf) is ``null``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")

# The largest image a reader decodes, checked from the header in _open (aerial mosaics can be large, a
# decompression bomb is larger). Pillow's own guard would only refuse at twice its limit, so _open checks.
MAX_PIXELS_ENV = "VISION_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = None  # the limit is _open's, so that VISION_MAX_PIXELS can raise it


def max_pixels() -> int:
    """The pixel limit of every reader here: ``$VISION_MAX_PIXELS`` if set (a positive number), else 200 Mpx.

    A value that is not a positive number is reported on stderr (once) and the default is used.
    """
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(value))
    except ValueError:
        limit = 0
    if limit <= 0:
        if value not in _warned:
            _warned.add(value)
            print(f"warning: {MAX_PIXELS_ENV}={value!r} is not a positive number of pixels; using "
                  f"{DEFAULT_MAX_PIXELS}", file=sys.stderr)
        return DEFAULT_MAX_PIXELS
    return limit


_warned: set[str] = set()


class ImageReadError(ValueError):
    """A file could not be read as an image or mask. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class RLEError(ValueError):
    """A Kaggle run-length encoding is malformed (odd length, out of range, overlapping runs)."""


# --------------------------------------------------------------------------------------------------- reading
def _open(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode ``path``; raise :class:`ImageReadError` with a reason a user can act on.

    The header is read first: an image over :func:`max_pixels` is refused before any decoding.
    """
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise ImageReadError(path, f"symbolic link to a file that does not exist ({os.readlink(path)}): "
                                       "file not found")
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        img = Image.open(path)  # reads the header only
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a readable image (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as err:  # a corrupt header
        raise ImageReadError(path, f"corrupt or truncated image ({err})") from None
    width, height, limit = *img.size, max_pixels()
    if width * height > limit:
        img.close()
        raise ImageReadError(path, f"image too large to decode: {width} x {height} = {width * height / 1e6:.0f} Mpx, "
                                   f"over the limit of {limit / 1e6:.0f} Mpx (the {MAX_PIXELS_ENV} environment "
                                   "variable raises it)")
    try:
        img.load()  # force the decode so that truncated files fail here, not later
    except (OSError, SyntaxError, ValueError) as err:  # truncated / corrupt data
        img.close()
        raise ImageReadError(path, f"corrupt or truncated image ({err})") from None
    return img


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale integer arrays of more than 8 bits (16-bit PNG/TIFF) down to uint8; pass uint8 through."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    # 16-bit (or 32-bit holding 16-bit values, Pillow's mode "I")
    return (arr.astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)


def read_rgb(path: str | os.PathLike, background: tuple[int, int, int] | None = None, min_side: int = 1,
             purpose: str = "use") -> np.ndarray:
    """Read any image file as RGB.

    Args:
        path: image file (names with spaces are fine).
        background: ``None`` drops an alpha channel (the pixel colours are kept as stored, the convention of
            the FCN exercise's RGBA ``rgb.png``); an RGB triple composites transparent pixels onto that colour
            instead (for cut-out product photos).

        min_side: the smallest height and width a caller can use: a smaller image is an :class:`ImageReadError`
            "image too small to <purpose> (W x H px; at least N px a side)".
        purpose: what the image is for, in that message.

    Returns:
        ``(H, W, 3)`` uint8 array, EXIF orientation applied.
    """
    img = _open(path)
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError) as err:  # a broken EXIF block must not cost the image
        raise ImageReadError(path, f"unreadable EXIF orientation ({err})") from None
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _to_uint8(np.asarray(img))
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") and background is not None:
        base = Image.new("RGBA", img.size, tuple(background) + (255,))
        img = Image.alpha_composite(base, img.convert("RGBA"))
    arr = np.asarray(img.convert("RGB"))
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(path, f"unsupported image layout {arr.shape}")
    if min(arr.shape[:2]) < min_side:
        raise ImageReadError(path, f"image too small to {purpose} ({arr.shape[1]} x {arr.shape[0]} px; at least "
                                   f"{min_side} px a side)")
    return np.ascontiguousarray(arr)


def read_mask(
    path: str | os.PathLike,
    mapping: Mapping[int, int] | None = None,
    default: int | None = None,
    colours: bool = False,
) -> np.ndarray:
    """Read a label mask with an explicit value mapping.

    Args:
        path: single- or multi-channel image; a multi-channel mask must have identical channels
            (e.g. the FCN exercise's RGB ``gt.png``). An alpha channel is ignored.
        mapping: raw value -> output value, e.g. ``{0: 1, 255: 0}``. ``None`` keeps raw values.
        default: output for raw values missing from ``mapping``; ``None`` makes them an error that
            lists the unexpected values.
        colours: False: a palette image's indices are the labels. True: the values are the gray levels the
            image shows, read as :func:`read_rgb` reads it (EXIF orientation applied, a palette image by its
            palette's colours: a black-and-white mask saved with a 2-colour palette holds indices 0 and 1).

    Returns:
        ``(H, W)`` uint8 array.
    """
    if colours:
        raw = _gray(path, read_rgb(path))
    else:
        img = _open(path)
        raw = np.asarray(img) if img.mode == "P" else _gray(path, _to_uint8(np.asarray(img)))
    if mapping is None:
        return np.ascontiguousarray(raw.astype(np.uint8))
    lut = np.full(256, -1 if default is None else default, dtype=np.int16)
    for src, dst in mapping.items():
        lut[int(src)] = int(dst)
    out = lut[raw]
    if default is None and (out < 0).any():
        bad = np.unique(raw[out < 0])
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise ImageReadError(path, f"unexpected mask values {shown}; expected only {sorted(mapping)}")
    return out.astype(np.uint8)


def _gray(path: str | os.PathLike, arr: np.ndarray) -> np.ndarray:
    """``(H, W)`` values of a gray image given as ``(H, W)`` or ``(H, W, C)`` with identical colour channels
    (an alpha channel is ignored); ImageReadError naming ``path`` when the channels differ."""
    if arr.ndim == 2:
        return arr
    color = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
    if not (color == color[..., :1]).all():
        raise ImageReadError(path, "mask channels differ: expected a gray mask (identical channels)")
    return color[..., 0]


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Entries of ``folder`` named like images (by extension, case-insensitive), sorted by name.

    A folder or a symbolic link to nothing that carries an image name is listed too, so that the reader
    names it with its reason (:func:`read_rgb` raises :class:`ImageReadError`) instead of leaving it out
    without a word.
    """
    folder = Path(folder)
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS)


# ------------------------------------------------------------------------------------------------ Kaggle RLE
def rle_decode(rle: str | float | None, shape: tuple[int, int] = (768, 768)) -> np.ndarray:
    """Decode a Kaggle Airbus run-length encoding.

    Runs are ``"start length start length ..."`` with 1-indexed starts over pixels numbered column-major
    (down the first column, then the next). An empty string, ``None`` or NaN (pandas' empty cell) is an
    empty mask.

    Returns:
        ``(H, W)`` uint8 mask with values {0, 1}.

    Raises:
        RLEError: odd number of values, non-positive lengths, runs outside the image, or runs that overlap
            or are not in increasing order.
    """
    h, w = shape
    if rle is None or (isinstance(rle, float) and np.isnan(rle)) or not str(rle).strip():
        return np.zeros(shape, dtype=np.uint8)
    try:
        values = np.asarray(str(rle).split(), dtype=np.int64)
    except ValueError:
        raise RLEError(f"RLE holds non-integer values: {str(rle)[:60]!r}") from None
    if values.size % 2:
        raise RLEError(f"RLE has an odd number of values ({values.size}): start/length pairs expected")
    starts, lengths = values[0::2] - 1, values[1::2]
    if (starts < 0).any():
        raise RLEError("RLE start below 1 (starts are 1-indexed)")
    if (lengths <= 0).any():
        raise RLEError("RLE run length must be positive")
    ends = starts + lengths
    if ends.max() > h * w:
        raise RLEError(f"RLE run ends at pixel {int(ends.max())}, beyond the {h}x{w} image ({h * w} pixels)")
    if (starts[1:] < ends[:-1]).any():
        raise RLEError("RLE runs overlap or are not in increasing order")
    flat = np.zeros(h * w, dtype=np.uint8)
    for s, e in zip(starts, ends):
        flat[s:e] = 1
    return flat.reshape(w, h).T.copy()


def rle_encode(mask: np.ndarray) -> str:
    """Encode a ``(H, W)`` binary mask as a Kaggle RLE string ("" for an empty mask)."""
    flat = np.asarray(mask).T.reshape(-1) > 0
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + 1  # 1-indexed run starts and ends
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends))


# ------------------------------------------------------------------------------------------- atomic writes
def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the process umask (mkstemp's own 0600 would hide outputs from
    the other users of a shared folder)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _new_file_mode()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    For libraries that write by file name (Pillow, matplotlib, ``torch.save``, ``keras.Model.save``). The
    temporary name keeps the suffix so that format detection by extension still works.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_leftovers(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Remove the temporary files that a killed run (SIGKILL, a power cut) left in ``folder`` while writing one of
    ``names`` through :func:`atomic_path` (``.<stem>.<8 random characters>.tmp<suffix>``); the temporary files of
    other names (another worker's table) are left alone."""
    for name in names:
        stem, suffix = Path(name).stem, Path(name).suffix
        pattern = re.compile(rf"\.{re.escape(stem)}\.[a-z0-9_]{{8}}\.tmp{re.escape(suffix)}")
        for path in Path(folder).glob(f".{_glob_escape(stem)}.*.tmp{_glob_escape(suffix)}"):
            if pattern.fullmatch(path.name):
                path.unlink(missing_ok=True)


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?[])", r"[\1]", text)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator:
    """``open()`` that writes to a temporary file and renames it onto ``path`` only when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def save_image(path: str | os.PathLike, array: np.ndarray, **pil_kwargs) -> Path:
    """Save a ``(H, W)`` or ``(H, W, 3|4)`` uint8 array atomically; the format follows the suffix."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(array)).save(tmp, format=Image.registered_extensions()[path.suffix.lower()],
                                                **pil_kwargs)
    return path


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Lay out a matplotlib figure, save it atomically (the format follows the suffix) and close it."""
    import matplotlib.pyplot as plt  # here, not at the top: common itself needs no matplotlib

    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".").lower() or None)
    plt.close(fig)
    return path


def json_safe(obj):
    """``obj`` made of plain JSON values: numpy integers, floats and arrays become Python numbers and lists, paths
    strings, tuples lists, and every non-finite float (NaN, +-inf; Python or numpy, also inside an array) becomes
    ``None``, i.e. ``null`` in the JSON: an undefined metric (the AUROC of a single class, the precision of a class
    with no sample) is ``null``. Python writes NaN as a bare ``NaN``, which is not JSON: strict parsers
    (JavaScript's ``JSON.parse``, jq, Go) reject the whole file. Other objects are returned as they are."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps_json(obj, indent: int | None = None) -> str:
    """``obj`` as JSON text (no final newline) by :func:`json_safe`'s rule: an undefined metric (NaN, +-inf) is
    ``null``. Dumped with ``allow_nan=False``, so a non-finite number can never come out as invalid JSON. For JSON
    printed to stdout; :func:`write_json` writes files the same way."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False, default=_json_default)


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically, by :func:`dumps_json` (an undefined metric, NaN or +-inf, is ``null``)."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(dumps_json(obj, indent) + "\n")
    return Path(path)


def _json_default(obj):
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
