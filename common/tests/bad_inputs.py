"""A corpus of awkward and broken input files, for tests that run a command-line tool over a folder of them.

``write_corpus(folder, base)`` writes, next to each other:

* lossless variants of ``base`` (an ``(H, W, 3)`` uint8 image) that every reader must decode to exactly
  ``base``: PNG, a PNG under a ``.jpg`` name, RGBA, 16-bit, palette (``base`` must hold at most 256
  colours for that one to be exact: :func:`few_colours` makes such an image), EXIF-rotated, a name with spaces
  and non-ASCII letters;
* lossy but readable variants (JPEG, CMYK JPEG, grayscale), which must be processed, not refused;
* broken entries that must be named with a reason while the rest of the batch goes on: an empty file, a
  truncated PNG and JPEG, text under an image name, a header declaring 40000 x 40000 pixels, a folder named
  like an image, a symbolic link to nothing, a 1x1 image.

Each case says what a tool should do with it (:class:`Case`); a test asserts that outcome for its tool.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

EXACT, READABLE, BROKEN = "exact", "readable", "broken"


@dataclass(frozen=True)
class Case:
    name: str  # file name inside the corpus folder
    kind: str  # EXACT: decodes to base; READABLE: decodes (lossy); BROKEN: must be refused, named, skipped
    reason: str = ""  # for BROKEN: a word the error message should contain (lower case)


def few_colours(shape=(64, 96), seed: int = 0) -> np.ndarray:
    """A smooth-ish ``(H, W, 3)`` uint8 image of at most 64 colours, so that a palette PNG of it is lossless."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (64, 3), dtype=np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    index = ((yy // 8) * 7 + (xx // 8) * 3 + rng.integers(0, 2, shape)) % 64
    return palette[index]


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG of ~100 bytes whose header declares ``width x height`` RGB pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def write_corpus(folder: str | os.PathLike, base: np.ndarray, broken: bool = True) -> list[Case]:
    """Write the corpus into ``folder`` (created) and return its cases, in file-name order.

    ``broken=False`` writes the readable cases only (for tools that must process every file).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(base)
    cases = []

    def add(name, kind, reason="", write=None):
        if write is not None:
            write(folder / name)
        cases.append(Case(name, kind, reason))

    add("plain.png", EXACT, write=lambda p: img.save(p))
    add("png named.jpg", EXACT, write=lambda p: img.save(p, format="PNG"))
    add("alpha.png", EXACT, write=lambda p: img.convert("RGBA").save(p))
    add("sixteen_bit.png", EXACT, write=lambda p: _save_16bit(base, p))
    add("palette.png", EXACT, write=lambda p: img.quantize(256, method=Image.Quantize.MEDIANCUT).save(p))
    add("exif_rotated.png", EXACT, write=lambda p: _save_rotated(base, p))
    add("späces and ünïcode.png", EXACT, write=lambda p: img.save(p))
    add("photo.jpg", READABLE, write=lambda p: img.save(p, quality=95))
    add("cmyk.jpg", READABLE, write=lambda p: img.convert("CMYK").save(p, quality=95))
    add("gray.png", READABLE, write=lambda p: img.convert("L").save(p))
    if broken:
        png = _png_bytes(img)
        add("empty.png", BROKEN, "empty", write=lambda p: p.write_bytes(b""))
        add("truncated.png", BROKEN, "truncated", write=lambda p: p.write_bytes(png[: len(png) // 2]))
        add("truncated.jpg", BROKEN, "truncated", write=lambda p: _write_truncated_jpeg(img, p))
        add("text.jpg", BROKEN, "not a readable image", write=lambda p: p.write_text("this is not an image"))
        add("huge.png", BROKEN, "too large", write=lambda p: p.write_bytes(png_claiming(40000, 40000)))
        add("folder.jpg", BROKEN, "folder", write=lambda p: p.mkdir())
        add("dangling.png", BROKEN, "not found", write=lambda p: p.symlink_to(folder / "no such file.png"))
        add("one_pixel.png", BROKEN, "too small", write=lambda p: Image.fromarray(base[:1, :1]).save(p))
    return sorted(cases, key=lambda c: c.name)


def _png_bytes(img: Image.Image) -> bytes:
    import io
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write_truncated_jpeg(img: Image.Image, path: Path) -> None:
    import io
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def _save_16bit(base: np.ndarray, path: Path) -> None:
    """A 16-bit grayscale PNG cannot hold colour in Pillow: write a 16-bit RGB PNG by hand (values x 257)."""
    h, w, _ = base.shape
    rows = (base.astype(">u2") * 257).reshape(h, w * 3)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _save_rotated(base: np.ndarray, path: Path) -> None:
    """Stored turned a quarter anticlockwise, with EXIF orientation 6 ("turn clockwise to show")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(base))).save(path, exif=exif)
