"""Synthetic mineral-specimen photos in 7 class folders, in the layout of the real minerals set.

    python -m minerals.demo_data --out data/minerals

Each photo shows one irregular specimen on a plain, slightly shaded background, like the web photos of the
real set. The classes differ in colour and texture (flaky dark biotite, iridescent bornite, blue
chrysocolla, banded green malachite, pale platy muscovite, brassy cubic pyrite, clear faceted quartz).
Writes ``<class>/<nnnn>.jpg`` (some ``.png``, one RGBA), ``manifest.csv`` (``path,label,dup_group``) and
``boxes_truth.csv`` (``path,xmin,ymin,xmax,ymax,label``: the true specimen box of every photo, which the real
set does not have; tests use it as a box file and to measure the automatic box finder).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.demo import claim_output, generator_parser, smooth_noise, write_marker
from common.io import atomic_write, save_image

CLASSES = ["biotite", "bornite", "chrysocolla", "malachite", "muscovite", "pyrite", "quartz"]

# base colour, second colour, texture: (kind, scale in px)
LOOKS = {
    "biotite": ((45, 35, 25), (90, 70, 40), ("flakes", 6)),
    "bornite": ((120, 70, 140), (40, 90, 160), ("noise", 10)),
    "chrysocolla": ((40, 170, 190), (30, 100, 150), ("noise", 25)),
    "malachite": ((20, 130, 60), (10, 70, 35), ("bands", 9)),
    "muscovite": ((200, 195, 175), (160, 150, 130), ("flakes", 12)),
    "pyrite": ((200, 170, 60), (130, 110, 40), ("cubes", 22)),
    "quartz": ((225, 225, 230), (170, 175, 190), ("facets", 30)),
}


def specimen_texture(label: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``(H, W, 3)`` float32 colour texture of one class."""
    c1, c2, (kind, scale) = LOOKS[label]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "bands":
        t = 0.5 + 0.5 * np.sin(np.hypot(yy - h * rng.random(), xx - w * rng.random()) / scale * 2
                               + 4 * smooth_noise((h, w), rng, scale=40))
    elif kind == "flakes":
        t = (smooth_noise((h, w), rng, scale=scale, octaves=2) > 0.5).astype(np.float32) * 0.7 \
            + 0.3 * smooth_noise((h, w), rng, scale=scale / 2, octaves=1)
    elif kind == "cubes":
        t = ((xx // scale + yy // scale) % 2) * 0.6 + 0.4 * smooth_noise((h, w), rng, scale=scale)
    elif kind == "facets":
        a = rng.uniform(0, np.pi)
        t = ((np.cos(a) * xx + np.sin(a) * yy) // scale % 3) / 2.0 * 0.7 + 0.3 * smooth_noise((h, w), rng, scale=8)
    else:
        t = smooth_noise((h, w), rng, scale=scale)
    t = t[..., None]
    return np.asarray(c1, np.float32) * (1 - t) + np.asarray(c2, np.float32) * t


def make_photo(label: str, rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, tuple]:
    """``(H, W, 3)`` uint8: one specimen (a random blob) of ``label`` on a plain background, and its box
    ``(xmin, ymin, xmax, ymax)`` in pixels (exclusive max)."""
    h, w = size
    bg = np.array(rng.choice([[245, 245, 245], [225, 225, 228], [40, 40, 45], [210, 200, 185]]), np.float32)
    img = bg * (0.92 + 0.08 * smooth_noise((h, w), rng, scale=w)[..., None])
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    r = min(h, w) * rng.uniform(0.25, 0.4)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radii = r * (0.7 + 0.3 * rng.random(24))
    poly = [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(angles, radii)]
    shape = Image.new("L", (w, h), 0)
    ImageDraw.Draw(shape).polygon(poly, fill=255)
    m = np.asarray(shape.filter(ImageFilter.GaussianBlur(1.5)), np.float32)[..., None] / 255
    tex = specimen_texture(label, h, w, rng)
    light = 0.75 + 0.35 * smooth_noise((h, w), rng, scale=r)[..., None]  # a little 3-D shading
    img = img * (1 - m) + tex * light * m
    img += rng.normal(0, 3, img.shape)
    xs, ys = [x for x, _ in poly], [y for _, y in poly]
    box = (max(int(min(xs)), 0), max(int(min(ys)), 0),
           min(int(np.ceil(max(xs))) + 1, w), min(int(np.ceil(max(ys))) + 1, h))
    return img.clip(0, 255).astype(np.uint8), box


def write(out: str | Path, seed: int = 0, per_class: int = 12, size: tuple[int, int] = (240, 320)) -> Path:
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows, boxes = [], []
    for label in CLASSES:
        for i in range(per_class):
            hw = (int(size[0] * rng.uniform(0.8, 1.3)), int(size[1] * rng.uniform(0.8, 1.3)))
            photo, box = make_photo(label, rng, hw)
            if i == 1:  # a PNG with an alpha channel, as some real files are
                alpha = np.full(photo.shape[:2] + (1,), 255, np.uint8)
                name, arr = f"{i:04d}.png", np.concatenate([photo, alpha], axis=-1)
            else:
                name, arr = f"{i:04d}.jpg", photo
            save_image(out / label / name, arr)
            rows.append({"path": f"{label}/{name}", "label": label, "dup_group": ""})
            boxes.append({"path": f"{label}/{name}", "xmin": box[0], "ymin": box[1], "xmax": box[2],
                          "ymax": box[3], "label": label})
    with atomic_write(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "dup_group"])
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(out / "boxes_truth.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "xmin", "ymin", "xmax", "ymax", "label"])
        writer.writeheader()
        writer.writerows(boxes)
    write_marker(out, f"{per_class} synthetic specimen photos per class in {len(CLASSES)} class folders.")
    return out


def main() -> None:
    p = generator_parser(__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=12, help="photos per class")
    args = p.parse_args()
    if claim_output(args.out, args.force):
        print(f"wrote demo mineral photos to {write(args.out, args.seed, args.per_class)}")


if __name__ == "__main__":
    main()
