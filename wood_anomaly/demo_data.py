"""Synthetic wood-board photos with knots and cracks, in the layout of the real wood set.

    python -m wood_anomaly.demo_data --out data/wood [--surface fabric]

    python -m wood_anomaly.demo_data --out /tmp/new_woods --surface varied --size 512 512 --n-images 24

Writes ``images/<stem>.jpg`` (stems contain a space, like the real photos), ``masks/consensus/<stem>.png``
(0/255, for tests and evaluation only: training never reads them) and ``image_labels.csv``
(``stem,label`` with label ``anomalous``/``normal``). ``--surface fabric`` makes a woven, non-wood texture
with the same kinds of defects, to try the method on another surface. ``--surface varied`` makes new woods
(a random species colour, ring width and figure per photo) with the defects of a held-out set: holes, colour
stains, liquid stains, scratches and knots of random size and contrast until a random 1-10 % of the pixels
are defective, every photo (``--clean-every 2``: every other photo clean), then a smooth geometric distortion.
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


def new_wood(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``(H, W, 3)`` float32: a wood of random colour, ring width and figure (strongly figured grain on some)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    figure = rng.uniform(0, 1)
    warp = smooth_noise((h, w), rng, scale=max(h, w) / 3) * rng.uniform(20, 90) + smooth_noise(
        (h, w), rng, scale=30) * 20 * figure
    period = rng.uniform(8, 30)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (yy + rng.uniform(-0.4, 0.4) * xx + warp) / period)
    grain = smooth_noise((h, w), rng, scale=rng.uniform(3, 8), octaves=2)
    tone = rng.uniform(0, 1)  # from a pale maple to a dark walnut, with a random red cast
    base = (np.array([228, 192, 148]) * (1 - tone) + np.array([105, 62, 38]) * tone).astype(np.float32)
    base[0] += rng.uniform(-10, 20)
    depth = rng.uniform(0.08, 0.25)
    return base * (1 - depth + depth * rings[..., None] + 0.08 * (grain[..., None] - 0.5))


def blob(h: int, w: int, rng: np.random.Generator, radius: float) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1]: an irregular soft blob of about ``radius`` px (a stain's footprint)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    d = np.hypot((yy - cy) / rng.uniform(0.6, 1.4), xx - cx) / radius
    d += 0.5 * (smooth_noise((h, w), rng, scale=max(radius, 4)) - 0.5)
    return np.clip((1 - d) * 4, 0, 1)


def varied_defect(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Paint one random defect into ``img`` (float32, in place) and mark it in ``mask`` (bool, in place): a hole,
    a colour stain, a liquid stain, a scratch or a knot, of random size and contrast (subtle ones included)."""
    h, w = mask.shape
    side = min(h, w)
    contrast = rng.uniform(0.25, 1.0)
    kind = rng.choice(["hole", "colour stain", "liquid stain", "scratch", "knot"])
    if kind == "scratch":
        line = Image.new("L", (w, h), 0)
        pts = [(rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h)]
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(4, 12))):
            angle += rng.normal(0, 0.1)
            pts.append((pts[-1][0] + side / 20 * np.cos(angle), pts[-1][1] + side / 20 * np.sin(angle)))
        ImageDraw.Draw(line).line(pts, fill=255, width=int(rng.integers(1, 4)))
        alpha = np.asarray(line, np.float32) / 255
        target = img * rng.choice([0.55, 1.35])
    elif kind == "hole":
        alpha = blob(h, w, rng, rng.uniform(0.006, 0.03) * side) ** 0.3
        target = np.full_like(img, rng.uniform(10, 50))
    elif kind == "colour stain":
        alpha = blob(h, w, rng, rng.uniform(0.03, 0.12) * side)
        target = img * rng.uniform(0.5, 1.3, 3).astype(np.float32)
    elif kind == "liquid stain":
        a = blob(h, w, rng, rng.uniform(0.04, 0.15) * side)
        alpha = 0.6 * a + 0.4 * (a > 0.05) * (a < 0.4)  # a faint darkening with a darker tide line
        target = img * 0.6
    else:
        alpha = blob(h, w, rng, rng.uniform(0.02, 0.06) * side) ** 0.5
        target = img * 0.35 + np.array([40, 25, 15], np.float32) * 0.65
    alpha = alpha * contrast
    img += alpha[..., None] * (target - img)
    mask |= alpha > 0.1 * contrast + 0.02


def distort(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, strength: float) -> tuple:
    """The photo and its mask under one smooth random displacement field of up to ``strength`` x side px."""
    from scipy import ndimage  # here: --help stays free of scipy

    h, w = mask.shape
    shift = [(smooth_noise((h, w), rng, scale=max(h, w) / 2, octaves=2) - 0.5) * 2 * strength * max(h, w)
             for _ in range(2)]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = [yy + shift[0], xx + shift[1]]
    out = np.stack([ndimage.map_coordinates(img[..., c], coords, order=1, mode="reflect") for c in range(3)], -1)
    return out, ndimage.map_coordinates(mask.astype(np.float32), coords, order=1, mode="reflect") > 0.5


def make_varied(h: int, w: int, rng: np.random.Generator, defective: bool) -> tuple[np.ndarray, np.ndarray]:
    """A new-wood photo; when ``defective``, random defects until a random 1-10 % (log-uniform) of its pixels are
    covered."""
    img = new_wood(h, w, rng)
    mask = np.zeros((h, w), bool)
    share = float(np.exp(rng.uniform(np.log(0.01), np.log(0.10)))) if defective else 0.0
    for _ in range(60):
        if mask.mean() >= share:
            break
        varied_defect(img, mask, rng)
    img = img * (0.95 + 0.1 * smooth_noise((h, w), rng, scale=w)[..., None]) + rng.normal(0, 3, img.shape)
    if rng.random() < 0.75:  # most photos geometrically distorted
        img, mask = distort(img, mask, rng, rng.uniform(0.01, 0.04))
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(pil), mask.astype(np.uint8) * 255


def make_image(h: int, w: int, rng: np.random.Generator, surface: str, n_knots: int, n_cracks: int):
    tex = wood_texture(h, w, rng) if surface == "wood" else fabric_texture(h, w, rng)
    img, mask = add_defects(tex, rng, n_knots, n_cracks)
    img = img * (0.95 + 0.1 * smooth_noise((h, w), rng, scale=w)[..., None])  # uneven light
    img += rng.normal(0, 3, img.shape)
    pil = Image.fromarray(img.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(pil), mask


def write(out: str | Path, seed: int = 0, surface: str = "wood", size: tuple[int, int] = (576, 768),
          n_images: int = 6, clean_every: int = 2) -> Path:
    """Write ``n_images`` photos; with ``clean_every`` n, every n-th one (the 2nd, 4th, ... for 2) is clean
    (0: every photo carries defects)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        anomalous = clean_every <= 0 or (i + 1) % clean_every != 0
        if surface == "varied":
            img, mask = make_varied(*size, rng, anomalous)
        else:
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
    p.add_argument("--surface", choices=["wood", "fabric", "varied"], default="wood",
                   help="texture of the photos (varied: new woods with holes, stains and scratches)")
    p.add_argument("--size", type=int, nargs=2, default=(576, 768), metavar=("H", "W"), help="photo size in px")
    p.add_argument("--n-images", type=int, default=6, help="number of photos")
    p.add_argument("--clean-every", type=int, default=None,
                   help="every n-th photo is clean; 0: all carry defects (default: 2, varied: 0)")
    args = p.parse_args()
    clean = args.clean_every if args.clean_every is not None else (0 if args.surface == "varied" else 2)
    if claim_output(args.out, args.force):
        out = write(args.out, args.seed, args.surface, tuple(args.size), args.n_images, clean)
        print(f"wrote demo {args.surface} photos to {out}")


if __name__ == "__main__":
    main()
