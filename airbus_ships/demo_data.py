"""Synthetic 768x768 sea images with ships and a Kaggle-format ``masks.csv``, like the Airbus set.

    python -m airbus_ships.demo_data --out data/airbus

Writes ``images/<ImageId>.jpg`` (ImageIds of 9 hex digits, as on Kaggle) and ``masks.csv`` with columns
``ImageId,EncodedPixels``: one row per ship (1-indexed, column-major RLE), a single empty row for an image
without ships. Ships are small bright rotated hulls with a wake, 8-60 px long; some images hold a piece of
coast or clouds, and about a third hold no ship at all.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.demo import claim_output, generator_parser, smooth_noise, write_marker
from common.io import atomic_write, rle_encode, save_image

SIZE = 768


def sea(rng: np.random.Generator) -> np.ndarray:
    """``(768, 768, 3)`` float32 sea with waves, sometimes a coast or clouds."""
    waves = smooth_noise((SIZE, SIZE), rng, scale=rng.uniform(20, 120))
    base = np.array(rng.choice([[20, 45, 60], [30, 60, 75], [15, 35, 50]]), np.float32)
    img = base * (0.85 + 0.3 * waves[..., None])
    if rng.random() < 0.25:  # a coastline
        land = smooth_noise((SIZE, SIZE), rng, scale=300) + np.linspace(-0.6, 0.6, SIZE)[None, :] * rng.choice([-1, 1])
        land = land > 0.75
        img[land] = np.array([120, 115, 95]) * (0.8 + 0.3 * smooth_noise((SIZE, SIZE), rng, scale=15)[land][:, None])
    if rng.random() < 0.2:  # clouds
        cloud = np.clip(smooth_noise((SIZE, SIZE), rng, scale=200) * 2 - 1.1, 0, 1)[..., None]
        img = img * (1 - cloud) + 235 * cloud
    return img


def draw_ship(img: Image.Image, rng: np.random.Generator, occupied: np.ndarray) -> np.ndarray | None:
    """Draw one ship that overlaps no earlier ship; return its ``(768, 768)`` bool mask, or None."""
    length = rng.uniform(8, 60)
    width = max(3.0, length * rng.uniform(0.15, 0.3))
    cx, cy = rng.uniform(40, SIZE - 40, size=2)
    a = rng.uniform(0, np.pi)
    d, n = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    hull = [(cx, cy) + d * length / 2, (cx, cy) + d * length / 2 * 0.7 + n * width / 2,
            (cx, cy) - d * length / 2 + n * width / 2, (cx, cy) - d * length / 2 - n * width / 2,
            (cx, cy) + d * length / 2 * 0.7 - n * width / 2]
    hull = [tuple(p) for p in hull]
    shape = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(shape).polygon(hull, fill=1)
    mask = np.asarray(shape).astype(bool)
    if not mask.any() or (mask & occupied).any():
        return None
    draw = ImageDraw.Draw(img)
    tail = (cx, cy) - d * length * rng.uniform(1.5, 3)
    draw.line([tuple((cx, cy) - d * length / 2), tuple(tail)], fill=(150, 165, 170), width=int(width * 0.8))
    grey = int(rng.integers(150, 250))
    draw.polygon(hull, fill=(grey, grey, grey - 10))
    return mask


def make_image(rng: np.random.Generator, n_ships: int) -> tuple[np.ndarray, list[np.ndarray]]:
    img = Image.fromarray(sea(rng).clip(0, 255).astype(np.uint8))
    occupied = np.zeros((SIZE, SIZE), bool)
    masks = []
    for _ in range(n_ships * 5):
        if len(masks) == n_ships:
            break
        m = draw_ship(img, rng, np.asarray(Image.fromarray(occupied).filter(ImageFilter.MaxFilter(5))))
        if m is not None:
            masks.append(m)
            occupied |= m
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(0.5))).astype(np.float32)
    arr += rng.normal(0, 3, arr.shape)
    return arr.clip(0, 255).astype(np.uint8), masks


def write(out: str | Path, seed: int = 0, n_images: int = 24) -> Path:
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_images):
        image_id = f"{int(rng.integers(0, 16 ** 9)):09x}.jpg"
        n_ships = 0 if rng.random() < 0.35 else int(rng.integers(1, 6))
        img, masks = make_image(rng, n_ships)
        save_image(out / "images" / image_id, img, quality=90)
        rows += [(image_id, rle_encode(m)) for m in masks] or [(image_id, "")]
    with atomic_write(out / "masks.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "EncodedPixels"])
        writer.writerows(rows)
    write_marker(out, f"{n_images} synthetic 768x768 sea images; masks.csv in the Kaggle RLE format.")
    return out


def main() -> None:
    p = generator_parser(__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=24, help="number of images")
    args = p.parse_args()
    if claim_output(args.out, args.force):
        print(f"wrote demo ship images to {write(args.out, args.seed, args.n_images)}")


if __name__ == "__main__":
    main()
