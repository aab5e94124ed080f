"""Synthetic wood-board photos with knots and cracks, in the layout of the real wood set.

    python -m wood_anomaly.demo_data --out data/wood [--surface fabric]

Writes ``images/<stem>.jpg`` (stems contain a space, like the real photos), ``masks/consensus/<stem>.png``
(0/255, for tests and evaluation only: training never reads them) and ``image_labels.csv``
(``stem,label`` with label ``anomalous``/``normal``). ``--surface fabric`` makes a woven, non-wood texture
with the same kinds of defects, to try the method on another surface.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.demo import claim_output, generator_parser, smooth_noise, write_marker
from common.io import atomic_write, save_image


def wood_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``(H, W, 3)`` float32 in [0, 255]: growth rings distorted by low-frequency noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = smooth_noise((h, w), rng, scale=max(h, w) / 3) * 60 + smooth_noise((h, w), rng, scale=60) * 8
    period = rng.uniform(14, 24)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (yy + 0.15 * xx + warp) / period)
    grain = smooth_noise((h, w), rng, scale=6, octaves=2)
    base = np.array(rng.choice([[196, 150, 110], [170, 120, 85], [215, 175, 130]]), np.float32)
    shade = 0.82 + 0.12 * rings[..., None] + 0.06 * grain[..., None]
    return base * shade


def fabric_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``(H, W, 3)`` float32: a woven twill pattern, the non-wood surface."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    p = rng.uniform(6, 9)
    weave = 0.5 + 0.25 * np.sin(2 * np.pi * xx / p) * np.sin(2 * np.pi * (yy + xx) / (2 * p)) + 0.25 * np.sin(
        2 * np.pi * yy / p)
    base = np.array(rng.choice([[90, 110, 150], [150, 150, 150], [120, 90, 80]]), np.float32)
    return base * (0.8 + 0.3 * weave[..., None]) + 6 * smooth_noise((h, w), rng, scale=30)[..., None]


def add_defects(img: np.ndarray, rng: np.random.Generator, n_knots: int,
                n_cracks: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint dark knots (ellipses with rings) and thin cracks; return ``(image, mask (H, W) uint8 0/255)``."""
    h, w = img.shape[:2]
    mask = Image.new("L", (w, h), 0)
    mdraw = ImageDraw.Draw(mask)
    out = img.copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(n_knots):
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        ry, rx = rng.uniform(0.015, 0.05) * h, rng.uniform(0.01, 0.035) * w
        d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        inside = d < 1
        dark = (0.35 + 0.15 * np.sin(d * 9))[inside]
        out[inside] = out[inside] * dark[:, None] + np.array([40, 25, 15]) * (1 - dark[:, None])
        mdraw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    for _ in range(n_cracks):
        pts = [(rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h)]
        angle = rng.uniform(0, np.pi)
        for _ in range(int(rng.integers(15, 30))):
            angle += rng.normal(0, 0.25)
            pts.append((pts[-1][0] + 8 * np.cos(angle), pts[-1][1] + 8 * np.sin(angle)))
        crack = Image.new("L", (w, h), 0)
        ImageDraw.Draw(crack).line(pts, fill=255, width=int(rng.integers(2, 5)))
        c = np.asarray(crack) > 0
        out[c] = out[c] * 0.3
        mdraw.line(pts, fill=255, width=6)
    return out, np.asarray(mask)


def make_image(h: int, w: int, rng: np.random.Generator, surface: str, n_knots: int, n_cracks: int):
    tex = wood_texture(h, w, rng) if surface == "wood" else fabric_texture(h, w, rng)
    img, mask = add_defects(tex, rng, n_knots, n_cracks)
    img = img * (0.95 + 0.1 * smooth_noise((h, w), rng, scale=w)[..., None])  # uneven light
    img += rng.normal(0, 3, img.shape)
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(pil), mask


def write(out: str | Path, seed: int = 0, surface: str = "wood", size: tuple[int, int] = (576, 768),
          n_images: int = 6) -> Path:
    """Write ``n_images`` photos; every other one, starting with the first, carries defects."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        anomalous = i % 2 == 0
        knots, cracks = (int(rng.integers(1, 4)), int(rng.integers(0, 2))) if anomalous else (0, 0)
        img, mask = make_image(*size, rng, surface, knots, cracks)
        stem = f"demo {surface} {i + 1:02d}"
        save_image(out / "images" / f"{stem}.jpg", img, quality=92)
        save_image(out / "masks" / "consensus" / f"{stem}.png", mask)
        rows.append({"stem": stem, "label": "anomalous" if mask.any() else "normal"})
    with atomic_write(out / "image_labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["stem", "label"])
        writer.writeheader()
        writer.writerows(rows)
    write_marker(out, f"{surface} photos with planted defects; masks/ and image_labels.csv are for evaluation only.")
    return out


def main() -> None:
    p = generator_parser(__doc__.splitlines()[0])
    p.add_argument("--surface", choices=["wood", "fabric"], default="wood", help="texture of the photos")
    args = p.parse_args()
    if claim_output(args.out, args.force):
        print(f"wrote demo {args.surface} photos to {write(args.out, args.seed, args.surface)}")


if __name__ == "__main__":
    main()
