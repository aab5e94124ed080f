"""Shared pieces of the synthetic demo-data generators (``<task>/demo_data.py``).

Each task's generator writes a small, deterministic data set in that task's real on-disk format, so that
``make demo`` and the tests run on a fresh clone without the real data. The rules they share live here:
never overwrite a folder that already holds data, mark generated folders, and a smooth noise texture.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

MARKER = "DEMO_DATA.txt"  # present in every generated folder; benchmarks refuse folders that have it


def is_demo(folder: str | Path) -> bool:
    """True when ``folder`` was written by a demo generator (benchmarks must not report on it)."""
    return (Path(folder) / MARKER).exists()


def claim_output(out: str | Path, force: bool = False) -> bool:
    """Decide whether a generator may write into ``out``.

    Returns False (and says why on stderr) when ``out`` already holds files, unless ``force`` is set and the
    folder is itself generated demo data: user data is never overwritten.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if force and is_demo(out):
            return True
        what = "demo data" if is_demo(out) else "data"
        print(f"{out} already holds {what}; leaving it alone", file=sys.stderr)
        return False
    out.mkdir(parents=True, exist_ok=True)
    return True


def write_marker(out: str | Path, description: str) -> None:
    (Path(out) / MARKER).write_text(
        "Synthetic demo data made by this project's generator; safe to delete.\n" + description + "\n")


def smooth_noise(shape: tuple[int, int], rng: np.random.Generator, scale: float, octaves: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1] of ``shape`` (H, W); ``scale`` is the size in pixels of the coarsest blobs."""
    from PIL import Image  # local: keeps import of common.demo light

    h, w = shape
    out = np.zeros(shape, dtype=np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cell = max(scale / 2 ** o, 1.0)
        gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
        grid = rng.random((gh, gw)).astype(np.float32)
        up = np.asarray(Image.fromarray(grid).resize((int(gw * cell), int(gh * cell)), Image.BICUBIC))
        out += amp * up[:h, :w]
        total += amp
        amp *= 0.5
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def generator_parser(description: str) -> argparse.ArgumentParser:
    """The shared command line of every generator: ``--out``, ``--seed``, ``--force`` (add task options to it)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, help="folder to write (skipped when it already holds data)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the output is deterministic)")
    p.add_argument("--force", action="store_true", help="rewrite a folder that holds generated demo data")
    return p
