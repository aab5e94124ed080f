"""Synthetic aerial image pair in the exercise's encoding, for the demo and the tests.

Writes ``rgb.png`` (RGBA, alpha 255) and ``gt.png`` (RGB, 3 identical channels, 0 = building, 255 = background)
plus a second, independent pair in ``extra/demo_val/`` to try predict.py on a new image:

    python -m fcnn_rgb_gt.demo_data --out data/fcnn
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common.demo import claim_output, generator_parser, smooth_noise, write_marker
from common.io import save_image

ROOF_COLOURS = [(205, 200, 190), (170, 90, 70), (120, 120, 125), (230, 228, 220), (150, 110, 80)]


def make_pair(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(rgb (H, W, 4) uint8, gt (H, W, 3) uint8)``: houses on sandy ground with roads and trees."""
    ground = smooth_noise((height, width), rng, scale=120)
    rgb = np.stack([170 + 50 * ground, 150 + 40 * ground, 110 + 30 * ground], axis=-1)
    trees = smooth_noise((height, width), rng, scale=40) > 0.72
    rgb[trees] = rgb[trees] * 0.4 + np.array([40, 90, 40]) * 0.6
    img = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    gt = Image.new("L", (width, height), 255)
    gdraw = ImageDraw.Draw(gt)
    for _ in range(max(1, (height + width) // 250)):  # roads
        if rng.random() < 0.5:
            y = int(rng.integers(0, height))
            draw.rectangle([0, y, width, y + int(rng.integers(8, 16))], fill=(95, 95, 100))
        else:
            x = int(rng.integers(0, width))
            draw.rectangle([x, 0, x + int(rng.integers(8, 16)), height], fill=(95, 95, 100))
    for _ in range(int(height * width / 9000)):  # buildings: rotated rectangles with a shadow
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        bw, bh = rng.uniform(12, 45), rng.uniform(12, 35)
        a = rng.uniform(0, np.pi)
        corners = np.array([[-bw, -bh], [bw, -bh], [bw, bh], [-bw, bh]]) / 2
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        poly = corners @ rot.T + [cx, cy]
        shadow = [tuple(p) for p in poly + [5, 5]]
        draw.polygon(shadow, fill=(60, 55, 50))
        colour = ROOF_COLOURS[int(rng.integers(len(ROOF_COLOURS)))]
        draw.polygon([tuple(p) for p in poly], fill=colour)
        gdraw.polygon([tuple(p) for p in poly], fill=0)
    arr = np.asarray(img).astype(np.float32)
    arr += rng.normal(0, 4, arr.shape)  # sensor noise
    rgba = np.concatenate([arr.clip(0, 255).astype(np.uint8), np.full((height, width, 1), 255, np.uint8)], -1)
    g = np.asarray(gt)
    return rgba, np.repeat(g[..., None], 3, axis=2)


def write(out: str | Path, seed: int = 0, size: tuple[int, int] = (480, 640)) -> Path:
    """Write the demo pairs into ``out`` (no checks; see :func:`main`)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    rgb, gt = make_pair(*size, rng)
    save_image(out / "rgb.png", rgb)
    save_image(out / "gt.png", gt)
    rgb, gt = make_pair(size[0] - 60, size[1] - 100, rng)
    save_image(out / "extra" / "demo_val" / "rgb.png", rgb)
    save_image(out / "extra" / "demo_val" / "gt.png", gt)
    write_marker(out, "rgb.png/gt.png: training pair; extra/demo_val/: a new image of the same kind.")
    return out


def main() -> None:
    args = generator_parser(__doc__.splitlines()[0]).parse_args()
    if claim_output(args.out, args.force):
        print(f"wrote demo aerial pairs to {write(args.out, args.seed)}")


if __name__ == "__main__":
    main()
