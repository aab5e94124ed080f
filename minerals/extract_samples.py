"""Positive and negative sample extractor: uncropped specimen photos -> tight patches + an index CSV.

    python minerals/extract_samples.py --data data/minerals --out runs/minerals/samples
    python minerals/extract_samples.py --data DIR --boxes boxes.csv|voc_xml_dir|yolo_txt_dir --out OUT

Input: ``<data>/<class>/<image>`` (the layout of the real set) and, optionally, a box file.
For every image:

* **Positive patches**: one tight crop per specimen box. Boxes come from ``--boxes`` when given (Pascal VOC
  XML, YOLO txt or CSV, see :func:`load_boxes`); otherwise :func:`find_specimen_box` finds the box itself
  with a classical foreground method against the plain photo background (the public set has no boxes):
  estimate the background colour from the image border, threshold the colour distance to it, clean the mask
  with morphology, keep the large connected components. When the border is not plain (the specimen or a
  textured backdrop fills the frame) it falls back to the whole image, which is then the tight box.
* **Negative patches** (class ``negative``): square crops drawn from image regions that do not touch any box
  (plain background, table, watermark corners) and synthetic non-mineral content (colour gradients,
  watermark-like text, scale bars / grids, blurred clutter) generated here, not taken from outside data.

Patches are stored pre-cropped and pre-resized (shorter side ``--patch-size``) so that training epochs only
decode small files. Everything is deterministic for a given ``--seed``. Outputs (the patches and contact sheets
of an earlier extraction into ``--out`` are removed): ``patches/<label>/*.jpg``,
``index.csv`` (one row per patch), ``boxes.csv`` (the boxes used, re-usable as a box file), ``photos.txt``
(the absolute path of ``--data``: train.py adds the whole photos of the transfer models' training patches from
it) and ``contact_sheet_NN.jpg`` pages showing every box (green: found, orange: whole-image fallback, blue: given)
and the negative crops (red) for review by eye.
"""
from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from common.config import HelpFormatter
from common.io import ImageReadError, atomic_write, list_images, read_rgb
from minerals.config import CLASSES, MINERALS, NEGATIVE, PHOTOS_RECORD

MIN_PHOTO_SIDE = 32  # px: a smaller photo cannot show a specimen (a 1x1 file would become a one-colour "patch")
INDEX_FIELDS = ["patch", "label", "kind", "source", "group", "method", "x0", "y0", "x1", "y1", "src_w", "src_h"]


@dataclass
class Box:
    """A box in pixels, ``x1``/``y1`` exclusive. ``norm`` marks YOLO boxes still in [0, 1] units."""
    x0: float
    y0: float
    x1: float
    y1: float
    norm: bool = False

    def to_pixels(self, w: int, h: int) -> Box:
        b = Box(self.x0 * w, self.y0 * h, self.x1 * w, self.y1 * h) if self.norm else self
        x0, x1 = sorted((int(round(b.x0)), int(round(b.x1))))
        y0, y1 = sorted((int(round(b.y0)), int(round(b.y1))))
        return Box(min(max(x0, 0), w - 1), min(max(y0, 0), h - 1), min(max(x1, 1), w), min(max(y1, 1), h))

    def disjoint(self, other: Box) -> bool:
        return self.x1 <= other.x0 or other.x1 <= self.x0 or self.y1 <= other.y0 or other.y1 <= self.y0

    def iou(self, other: Box) -> float:
        """Intersection over union of two pixel boxes."""
        inter = max(0, min(self.x1, other.x1) - max(self.x0, other.x0)) * \
            max(0, min(self.y1, other.y1) - max(self.y0, other.y0))
        union = (self.x1 - self.x0) * (self.y1 - self.y0) + (other.x1 - other.x0) * (other.y1 - other.y0) - inter
        return inter / union if union > 0 else 0.0


# ------------------------------------------------------------------------------------------------ box files
def _keys(name: str) -> list[str]:
    """Lookup keys of an image name: relative path, relative path without extension, basename, stem."""
    p = Path(name.replace("\\", "/"))
    return [str(p), str(p.with_suffix("")), p.name, p.stem]


def load_boxes(spec: str | Path) -> dict[str, list[Box]]:
    """Read boxes from a CSV file, a Pascal VOC XML file / folder, or a folder of YOLO txt files.

    * CSV: a header with ``path`` (or ``filename``/``image``) and ``xmin,ymin,xmax,ymax`` in pixels; any
      other columns (e.g. ``label``) are ignored; several rows per image give several boxes.
    * Pascal VOC: ``<annotation><filename>`` and ``<object><bndbox><xmin>...`` (1-based, inclusive).
    * YOLO: ``<image stem>.txt`` holding ``class cx cy w h`` lines in [0, 1] units, anywhere under the folder.
    Returns ``{key: [Box, ...]}`` with several keys per image (see :func:`boxes_for`).
    """
    spec = Path(spec)
    table: dict[str, list[Box]] = {}

    def add(name: str, box: Box) -> None:
        for k in dict.fromkeys(_keys(name)):
            table.setdefault(k, []).append(box)

    files = sorted(spec.rglob("*")) if spec.is_dir() else [spec]
    if not files or not spec.exists():
        raise FileNotFoundError(f"{spec}: box file or folder not found")
    def skip(where: str, err: Exception) -> None:  # a bad row or file is named; the rest of the boxes are used
        print(f"skipped {where}: {err} (an image left without boxes gets the automatic one)", file=sys.stderr)

    for f in files:
        rel = f.relative_to(spec) if spec.is_dir() else Path(f.name)
        if f.suffix.lower() == ".csv":
            try:
                text = f.read_text(encoding="utf-8-sig")  # (a byte-order mark is not part of the first column)
            except UnicodeDecodeError as err:
                raise ValueError(f"{f}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
            with io.StringIO(text, newline="") as fh:
                reader = csv.DictReader(fh)
                if not {"xmin", "ymin", "xmax", "ymax"} <= set(reader.fieldnames or []) or not (
                        {"path", "filename", "image"} & set(reader.fieldnames or [])):
                    raise ValueError(f"{f}: a CSV box file needs a 'path' (or 'filename' / 'image') column and "
                                     f"xmin, ymin, xmax, ymax (found {reader.fieldnames})")
                for row in reader:
                    name = row.get("path") or row.get("filename") or row.get("image")
                    try:
                        if not name:
                            raise ValueError("no image name")
                        add(name, Box(*(float(row[c]) for c in ("xmin", "ymin", "xmax", "ymax"))))
                    except (ValueError, TypeError) as err:
                        skip(f"{f}:{reader.line_num}", err)
        elif f.suffix.lower() == ".xml":
            try:
                root = ET.parse(f).getroot()
                name = root.findtext("filename") or f.stem
                boxes = [Box(float(bb.findtext("xmin")) - 1, float(bb.findtext("ymin")) - 1,  # VOC: 1-based,
                             float(bb.findtext("xmax")), float(bb.findtext("ymax")))  # inclusive
                         for bb in (obj.find("bndbox") for obj in root.iter("object")) if bb is not None]
            except (ET.ParseError, ValueError, TypeError) as err:
                skip(str(f), err)
                continue
            for box in boxes:
                add(name, box)
                add(str(rel.with_suffix("")), box)
        elif f.suffix.lower() == ".txt":
            try:
                lines = f.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as err:
                skip(str(f), f"not UTF-8 text ({err.reason} at byte {err.start})")
                continue
            for k, line in enumerate(lines, 1):
                parts = line.split()
                if len(parts) < 5:
                    continue
                try:
                    cx, cy, bw, bh = map(float, parts[1:5])
                except ValueError as err:
                    skip(f"{f}:{k}", err)
                    continue
                add(str(rel.with_suffix("")), Box(cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, norm=True))
    return table


def matched_key(table: dict[str, list[Box]], rel: str) -> str | None:
    """The key of ``table`` that image ``rel`` (``class/file.jpg``) finds, the most specific first."""
    return next((k for k in _keys(rel) if k in table), None)


def boxes_for(table: dict[str, list[Box]], rel: str) -> list[Box]:
    """The boxes of image ``rel`` (``class/file.jpg``), trying the most specific key first."""
    k = matched_key(table, rel)
    return table[k] if k is not None else []


def ambiguous_names(table: dict[str, list[Box]], rels: list[str]) -> dict[str, list[str]]:
    """Box-file names that more than one image finds (a bare ``0034.jpg`` when several class folders hold one):
    ``{name: [images]}``. Their boxes cannot be told apart."""
    found: dict[str, list[str]] = {}
    for rel in rels:
        k = matched_key(table, rel)
        if k is not None:
            found.setdefault(k, []).append(rel)
    return {k: v for k, v in found.items() if len(v) > 1}


# --------------------------------------------------------------------------------------- automatic boxes
def find_specimen_box(img: np.ndarray, analysis_size: int = 256) -> tuple[Box, str]:
    """Find the specimen box of a photo with a plain background.

    Returns ``(box, method)``: ``method`` is ``"foreground"`` when the box comes from the foreground mask and
    ``"full"`` when the border is not plain enough (or no clear foreground is found) and the whole image is
    taken as the box. Classical on purpose: the public set has no boxes to train a detector with.
    """
    from scipy import ndimage  # (imported when used: --help answers without it)

    h, w = img.shape[:2]
    scale = min(1.0, analysis_size / max(h, w))
    small = np.asarray(Image.fromarray(img).resize((max(int(w * scale), 8), max(int(h * scale), 8)),
                                                   Image.BILINEAR), np.float32)
    small = ndimage.uniform_filter(small, size=(3, 3, 1))  # blunt JPEG noise
    sh, sw = small.shape[:2]
    b = max(2, int(round(0.04 * min(sh, sw))))
    border = np.concatenate([small[:b].reshape(-1, 3), small[-b:].reshape(-1, 3),
                             small[:, :b].reshape(-1, 3), small[:, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    border_dist = np.linalg.norm(border - bg, axis=1)
    full = (Box(0, 0, w, h), "full")
    # a plain backdrop: most of the border is close to one colour (a specimen touching one side is fine)
    if np.mean(border_dist < 30) < 0.6:
        return full
    thr = max(30.0, 2.0 * float(np.percentile(border_dist, 80)))
    mask = np.linalg.norm(small - bg, axis=2) > thr
    mask = ndimage.binary_opening(mask, iterations=2)
    mask = ndimage.binary_closing(mask, iterations=3)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n == 0:
        return full
    areas = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero((areas >= 0.15 * areas.max()) & (areas >= 0.005 * sh * sw)) + 1
    fg = np.isin(labels, keep)
    if fg.sum() < 0.02 * sh * sw:
        return full
    ys, xs = np.nonzero(fg)
    m = 0.02 * max(sh, sw)  # a small margin: the box must hold the whole specimen
    box = Box((xs.min() - m) / scale, (ys.min() - m) / scale, (xs.max() + 1 + m) / scale, (ys.max() + 1 + m) / scale)
    return box.to_pixels(w, h), "foreground"


# ------------------------------------------------------------------------------------------------ patches
def resize_patch(patch: np.ndarray, size: int, max_aspect: float = 2.0) -> Image.Image:
    """Shorter side -> ``size`` (never upscaled), longer side centre-cropped to at most ``max_aspect`` x."""
    h, w = patch.shape[:2]
    if max(h, w) > max_aspect * min(h, w):
        if h > w:
            c = int(max_aspect * w)
            patch = patch[(h - c) // 2:(h - c) // 2 + c]
        else:
            c = int(max_aspect * h)
            patch = patch[:, (w - c) // 2:(w - c) // 2 + c]
    im = Image.fromarray(patch)
    s = min(1.0, size / min(im.size))
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.LANCZOS) if s < 1 else im


def negative_crops(w: int, h: int, boxes: list[Box], n: int, rng: np.random.Generator,
                   min_side: int = 32, tries: int = 60) -> list[Box]:
    """Up to ``n`` square crops that do not touch any box, sides 15-40 % of the shorter image side."""
    out: list[Box] = []
    for _ in range(tries):
        if len(out) >= n:
            break
        s = int(rng.uniform(0.15, 0.4) * min(w, h))
        if s < min_side:
            s = min_side
        if s >= w or s >= h:
            break
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        c = Box(x, y, x + s, y + s)
        if all(c.disjoint(b) for b in boxes) and all(c.disjoint(o) for o in out):
            out.append(c)
    return out


def synthetic_negative(rng: np.random.Generator, size: int) -> Image.Image:
    """One non-mineral patch: a backdrop gradient, watermark-like text, a scale bar / grid, or clutter."""
    kind = rng.integers(4)
    base = rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    a = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(a) * xx + np.sin(a) * yy)[..., None]
    img = np.clip(base + rng.uniform(-60, 60) * ramp + rng.normal(0, 3, (size, size, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    ink = tuple(int(v) for v in (255 - base if rng.random() < 0.7 else rng.integers(0, 256, 3)))
    if kind == 1:  # watermark / label text
        font = ImageFont.load_default(size=int(rng.integers(14, 40)))
        words = ["iStock", "Shutterstock", "Getty Images", "geology.com", "(c) 2019", "sample 12", "cm"]
        for _ in range(int(rng.integers(1, 4))):
            d.text((int(rng.integers(0, size // 2)), int(rng.integers(0, size - 20))),
                   str(rng.choice(words)), fill=ink, font=font)
    elif kind == 2:  # scale bar, ruler ticks or a grid
        step = int(rng.integers(8, 32))
        for x in range(0, size, step):
            d.line([(x, 0), (x, size if rng.random() < 0.5 else size // 4)], fill=ink, width=int(rng.integers(1, 4)))
    elif kind == 3:  # blurred clutter: random ellipses of many colours (table, hands, cloth)
        for _ in range(int(rng.integers(3, 12))):
            (x, y), r = rng.integers(0, size, 2), int(rng.integers(8, size // 2))
            d.ellipse([int(x) - r, int(y) - r, int(x) + r, int(y) + r],
                      fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 6))))
    return im


def safe_name(rel: str, i: int) -> str:
    return f"{i:04d}_" + re.sub(r"[^A-Za-z0-9_-]+", "_", Path(rel).stem)[:40]


def read_manifest_groups(data: Path) -> dict[str, str]:
    """``{relative path: duplicate group}`` from ``manifest.csv`` when present (empty group -> own path)."""
    groups: dict[str, str] = {}
    if (data / "manifest.csv").exists():
        with open(data / "manifest.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("dup_group"):
                    groups[row["path"]] = row["dup_group"]
    return groups


# ------------------------------------------------------------------------------------------------ contact
def contact_sheets(entries: list[tuple[np.ndarray, list[tuple[Box, str]], str]], out: Path,
                   per_page: int = 48, thumb: int = 160) -> list[Path]:
    """Grid pages of thumbnails with the boxes drawn: entries are ``(image, [(box, colour)], caption)``."""
    paths = []
    cols = 8
    for p0 in range(0, len(entries), per_page):
        page = entries[p0:p0 + per_page]
        rows = (len(page) + cols - 1) // cols
        sheet = Image.new("RGB", (cols * thumb, rows * (thumb + 14)), "white")
        d = ImageDraw.Draw(sheet)
        for k, (img, boxes, caption) in enumerate(page):
            h, w = img.shape[:2]
            s = thumb / max(h, w)
            ox, oy = (k % cols) * thumb, (k // cols) * (thumb + 14)
            sheet.paste(Image.fromarray(img).resize((max(1, int(w * s)), max(1, int(h * s)))), (ox, oy))
            for b, colour in boxes:
                d.rectangle([ox + b.x0 * s, oy + b.y0 * s, ox + b.x1 * s - 1, oy + b.y1 * s - 1], outline=colour,
                            width=2)
            d.text((ox + 2, oy + thumb), caption[:26], fill="black")
        path = out / f"contact_sheet_{p0 // per_page:02d}.jpg"
        with atomic_write(path, "wb") as f:
            sheet.save(f, format="JPEG", quality=85)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------- main
def extract(data: Path, out: Path, boxes: Path | None = None, patch_size: int = 160, neg_per_image: int = 1,
            synthetic: float = 0.2, seed: int = 0, sheets: bool = True, sheet_max: int = 10_000) -> list[dict]:
    """Extract all patches of ``data`` into ``out``; returns the index rows (also written to index.csv)."""
    if patch_size < 1 or neg_per_image < 0 or not synthetic >= 0 or seed < 0:  # (NaN fails `>= 0` too)
        raise SystemExit(f"error: --patch-size {patch_size} (at least 1 px), --neg-per-image {neg_per_image}, "
                         f"--synthetic {synthetic} and --seed {seed} (0 or more) cannot all be used")
    from tqdm import tqdm

    images, table = list_photos(data, boxes)
    groups = read_manifest_groups(data)
    rows, box_rows, review, skipped = [], [], [], 0
    for i, (label, path) in enumerate(tqdm(images, desc="extract", unit="photo", file=sys.stderr)):
        rel = f"{label}/{path.name}"
        try:
            img = read_photo(path)
        except ImageReadError as err:
            tqdm.write(f"skipped {err}", file=sys.stderr)
            skipped += 1
            continue
        found, method = photo_boxes(img, rel, table, boxes)
        rng = np.random.default_rng([seed, zlib.crc32(rel.encode())])
        photo_rows, drawn = extract_photo(img, rel, label, groups.get(rel, rel), safe_name(rel, i), found, method,
                                          out, patch_size, neg_per_image, rng)
        rows += photo_rows
        box_rows += [dict(path=rel, xmin=r["x0"], ymin=r["y0"], xmax=r["x1"], ymax=r["y1"], label=label,
                          method=method) for r in photo_rows if r["kind"] == "positive"]
        if sheets and len(review) < sheet_max:
            h, w = img.shape[:2]
            s = 320 / max(h, w)
            thumb = np.asarray(Image.fromarray(img).resize((max(1, int(w * s)), max(1, int(h * s)))))
            review.append((thumb, [(Box(b.x0 * s, b.y0 * s, b.x1 * s, b.y1 * s), col) for b, col in drawn], rel))
    if skipped:
        print(f"{skipped} of {len(images)} photos skipped (named above)", file=sys.stderr)
    rows += synthetic_rows(out, int(round(synthetic * len(images))), patch_size, seed)
    write_csv(out / "index.csv", rows, INDEX_FIELDS)
    write_csv(out / "boxes.csv", box_rows, ["path", "xmin", "ymin", "xmax", "ymax", "label", "method"])
    with atomic_write(out / PHOTOS_RECORD, "w", encoding="utf-8") as f:  # (train.py --photos auto reads it)
        f.write(f"{data.resolve()}\n")
    remove_stale(out, {out / "patches" / r["patch"] for r in rows}, contact_sheets(review, out) if sheets else None)
    return rows


def read_photo(path: Path) -> np.ndarray:
    """The RGB pixels of one photo; ``ImageReadError`` for an unreadable one or one under ``MIN_PHOTO_SIDE`` px."""
    return read_rgb(path, min_side=MIN_PHOTO_SIDE, purpose="hold a specimen")


def list_photos(data: Path, boxes: Path | None) -> tuple[list[tuple[str, Path]], dict[str, list[Box]] | None]:
    """(``[(class, photo)]`` of ``<data>/<class>/<image>``, the box table of ``boxes`` or None); every problem a
    user can fix (no folder, foreign class folders, an unreadable or ambiguous box file) is one error line."""
    if not data.is_dir():
        raise SystemExit(f"error: {data}: no such folder (expected <data>/<class>/<image> photos)")
    if boxes is not None and not boxes.exists():
        raise SystemExit(f"error: --boxes {boxes}: no such file or folder")
    try:
        table = load_boxes(boxes) if boxes else None
    except ValueError as err:  # a box file without the columns it needs
        raise SystemExit(f"error: {err}") from None
    classes = sorted(d.name for d in data.iterdir()  # (hidden folders and the __MACOSX of zip files: not classes)
                     if d.is_dir() and not d.name.startswith(".") and d.name != "__MACOSX")
    foreign = [c for c in classes if c not in CLASSES]
    if foreign:  # train.py would stop on their label; a misspelt folder would also lose its class
        raise SystemExit(f"error: {data}: class folders {foreign} are not among {CLASSES} (rename or move them)")
    if missing := [c for c in MINERALS if c not in classes]:
        print(f"warning: {data}: no folder for {missing}; the model will never answer them", file=sys.stderr)
    images = [(c, p) for c in classes for p in list_images(data / c)]
    if not images:
        raise SystemExit(f"{data}: no images in class folders <data>/<class>/")
    clash = ambiguous_names(table, [f"{c}/{p.name}" for c, p in images]) if table is not None else {}
    if clash:
        k, rels = next(iter(clash.items()))
        raise SystemExit(f"error: {boxes}: {len(clash)} image names match several images (e.g. {k!r}: "
                         f"{', '.join(rels[:3])}): name the images as <class>/<file> in the box file")
    return images, table


def photo_boxes(img: np.ndarray, rel: str, table: dict[str, list[Box]] | None,
                boxes: Path | None) -> tuple[list[Box], str]:
    """(the specimen boxes of one photo, how they were found): given in the box table, else found."""
    if table is not None:
        h, w = img.shape[:2]
        found = [b.to_pixels(w, h) for b in boxes_for(table, rel)]
        found = [b for b in found if b.x1 - b.x0 >= 4 and b.y1 - b.y0 >= 4]
        if found:
            return found, "given"
        print(f"{rel}: no box in {boxes}; using the automatic box", file=sys.stderr)
    box, method = find_specimen_box(img)
    return [box], method


BOX_COLOURS = {"given": "blue", "foreground": "lime", "full": "orange"}  # on the contact sheets; negatives red


def extract_photo(img: np.ndarray, rel: str, label: str, group: str, stem: str, found: list[Box], method: str,
                  out: Path, patch_size: int, neg_per_image: int, rng: np.random.Generator):
    """Save one photo's positive patches (one per box) and negative crops; returns (their index rows, the boxes to
    draw on the contact sheet with their colours)."""
    h, w = img.shape[:2]
    rows, drawn = [], []
    for k, b in enumerate(found):
        name = f"{label}/{stem}_p{k}.jpg"
        save_jpeg(resize_patch(img[b.y0:b.y1, b.x0:b.x1], patch_size), out / "patches" / name)
        rows.append(dict(patch=name, label=label, kind="positive", source=rel, group=group, method=method,
                         x0=b.x0, y0=b.y0, x1=b.x1, y1=b.y1, src_w=w, src_h=h))
        drawn.append((b, BOX_COLOURS[method]))
    for k, c in enumerate(negative_crops(w, h, found, neg_per_image, rng)):
        name = f"{NEGATIVE}/{stem}_n{k}.jpg"
        save_jpeg(resize_patch(img[c.y0:c.y1, c.x0:c.x1], patch_size), out / "patches" / name)
        rows.append(dict(patch=name, label=NEGATIVE, kind="background", source=rel, group=group, method="outside",
                         x0=c.x0, y0=c.y0, x1=c.x1, y1=c.y1, src_w=w, src_h=h))
        drawn.append((c, "red"))
    return rows, drawn


def synthetic_rows(out: Path, n: int, patch_size: int, seed: int) -> list[dict]:
    """Save ``n`` synthetic non-mineral patches; returns their index rows."""
    rng = np.random.default_rng([seed, 7])
    rows = []
    for k in range(n):
        name = f"{NEGATIVE}/synthetic_{k:04d}.jpg"
        save_jpeg(synthetic_negative(rng, patch_size), out / "patches" / name)
        rows.append(dict(patch=name, label=NEGATIVE, kind="synthetic", source="", group=f"synthetic_{k}",
                         method="synthetic", x0=0, y0=0, x1=patch_size, y1=patch_size, src_w=patch_size,
                         src_h=patch_size))
    return rows


def remove_stale(out: Path, patches: set[Path], sheets: list[Path] | None) -> None:
    """Delete the patches (and, when ``sheets`` were written, the contact sheets) an earlier extraction left in
    ``out`` that this one did not write (other photos, e.g. the demo set before the real one): ``predict.py``'s
    default input is ``out/patches``, which must hold this index's patches only."""
    stale = [f for f in (out / "patches").glob("*/*.jpg") if f not in patches]  # (incl. a killed run's temp files)
    stale += list(out.glob(".*.tmp.*"))  # index.csv, boxes.csv or a contact sheet a killed run left half-written
    stale += [f for f in out.glob("contact_sheet_*.jpg") if f not in sheets] if sheets is not None else []
    for f in stale:
        f.unlink()
    if stale:
        print(f"removed {len(stale)} patches / contact sheets of an earlier extraction from {out}", file=sys.stderr)


def save_jpeg(im: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        im.save(f, format="JPEG", quality=95)


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--data", default="data/minerals", help="folder of <class>/<image> photos")
    p.add_argument("--out", default="runs/minerals/samples",
                   help="output folder (patches/, index.csv, boxes.csv, photos.txt, sheets)")
    p.add_argument("--boxes", default=None, help="box file/folder: CSV, Pascal VOC XML or YOLO txt (default: the "
                                                 "boxes are found in the photos)")
    p.add_argument("--patch-size", type=int, default=160, help="shorter side of the stored patches, px")
    p.add_argument("--neg-per-image", type=int, default=1, help="background crops per image, outside every box")
    p.add_argument("--synthetic", type=float, default=0.2, help="synthetic non-mineral patches per image")
    p.add_argument("--no-sheets", action="store_true", help="skip the contact sheets")
    p.add_argument("--seed", type=int, default=0, help="random seed (the output is deterministic)")
    args = p.parse_args()
    rows = extract(Path(args.data), Path(args.out), Path(args.boxes) if args.boxes else None, args.patch_size,
                   args.neg_per_image, args.synthetic, args.seed, not args.no_sheets)
    kinds = {}
    for r in rows:
        key = r["kind"] if r["kind"] != "positive" else f"positive/{r['method']}"
        kinds[key] = kinds.get(key, 0) + 1
    print(f"wrote {len(rows)} patches to {args.out}/patches ({kinds}); index: {args.out}/index.csv", file=sys.stderr)


if __name__ == "__main__":
    main()
