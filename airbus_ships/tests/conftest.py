"""Shared fixtures: demo data and one tiny trained model, made once per test session in temporary folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "airbus_ships"
N_IMAGES = 12  # small demo set: enough ship and no-ship images, fast to generate


def _run_script(script: str, *args, cwd=ROOT) -> subprocess.CompletedProcess:
    """Run an airbus_ships script in a fresh interpreter (as a user would); fail with its output shown."""
    proc = subprocess.run([sys.executable, str(PKG / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from airbus_ships.demo_data import write
    return write(tmp_path_factory.mktemp("airbus_demo") / "airbus", seed=1, n_images=N_IMAGES)


@pytest.fixture(scope="session")
def trained_run(demo_dir, tmp_path_factory) -> Path:
    """A tiny model trained by train.py (2 epochs of 3 steps), then resumed for a third epoch with only --out,
    --resume and --epochs (the rest comes from the run's config.json); its ship rule is chosen on the 3
    validation images topped up with 2 training images."""
    out = tmp_path_factory.mktemp("airbus_run")
    _run_script("train.py", "--data", demo_dir, "--out", out, "--encoder", "scratch",
                "--widths", "4,8,16", "--batch-size", "2", "--steps-per-epoch", "3", "--val-steps", "1",
                "--val-fraction", "0.25", "--calib-images", "5", "--epochs", "2")
    _run_script("train.py", "--out", out, "--resume", "--epochs", "3")
    return out


@pytest.fixture(scope="session")
def run_test_script():
    """Call test.py on ``data`` with the model of ``run``, writing into ``out`` (all overlays)."""
    def run(data, run, out, *extra):
        return _run_script("test.py", "--data", data, "--model", run / "model" / "best.keras", "--out", out,
                           "--overlays", "-1", *extra)
    return run
