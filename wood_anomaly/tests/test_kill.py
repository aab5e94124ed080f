"""kill -9 of the tools that write outputs: predict.py (a first run and a rerun into a complete earlier run) and
train.py (one pass, no --resume: a killed run is run again from scratch). After the kill nothing complete is
lost, every row of the table describes what its photo's folder holds, and running the command again ends with
the outputs of an uninterrupted run."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.io import read_mask
from wood_anomaly import demo_data, predict
from wood_anomaly.config import output_folders
from wood_anomaly.tests.conftest import TINY, assert_same_outputs

pytestmark = pytest.mark.slow  # starts and kills processes

ROOT = Path(__file__).resolve().parents[2]


def start(script: str, *args, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, str(ROOT / "wood_anomaly" / script), *map(str, args)], cwd=ROOT,
                                stdout=f, stderr=subprocess.STDOUT)


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the timings (seconds differ from run to run)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith("timings")}


def rows_on_disk(out: Path) -> dict[str, dict]:
    with open(out / "predictions.csv", newline="") as f:
        return {r["image"]: r for r in csv.DictReader(f)}


def saved_once(out: Path, before: bytes | None = None):
    """True once predict.py has written its table (another one than ``before``) at least once."""
    def ready() -> bool:
        table = out / "predictions.csv"
        return table.exists() and table.read_bytes() != before and "not processed" in table.read_text()
    return ready


@pytest.fixture(scope="module")
def eight_photos(tmp_path_factory):
    return demo_data.write(tmp_path_factory.mktemp("eight photos"), seed=7, size=(192, 256), n_images=8) / "images"


@pytest.fixture(scope="module")
def uninterrupted(trained_run, eight_photos, tmp_path_factory):
    """``threshold -> output folder`` of uninterrupted runs (the model's own threshold: '0', and 5 spreads)."""
    runs = {}
    for threshold in ("0", "5"):
        out = tmp_path_factory.mktemp(f"uninterrupted {threshold}")
        cmd = ["--data", eight_photos, "--model", trained_run / "model.pt", "--out", out, "--threshold", threshold]
        assert subprocess.run([sys.executable, str(ROOT / "wood_anomaly" / "predict.py"), *map(str, cmd)],
                              cwd=ROOT, capture_output=True).returncode == 0
        runs[threshold] = out
    return runs


def assert_rows_describe_their_folders(out: Path, names: list[str]) -> dict[str, dict]:
    """Each row with status ok has its four outputs (its mask's area as the row says); any other row's folder
    holds the outputs of the earlier run it keeps, or none."""
    rows, folders = rows_on_disk(out), output_folders(names)
    assert list(rows) == names
    for name, row in rows.items():
        folder = out / folders[name]
        has_outputs = [(folder / f).is_file() for f in predict.OUTPUTS]
        if row["status"] == "ok" or predict.KEPT in row["status"]:
            assert all(has_outputs), name
            mask = read_mask(folder / "preds.png", {0: 0, 255: 1})
            assert int(mask.sum()) == int(row["anomalous_area_px"]), name
        else:
            assert row["status"].startswith("not processed") and not any(has_outputs), row
    return rows


def test_kill_9_of_a_first_run_keeps_the_photos_done(trained_run, eight_photos, uninterrupted, tmp_path, kill_when):
    out = tmp_path / "pred"
    args = ["--data", eight_photos, "--model", trained_run / "model.pt", "--out", out]
    kill_when(start("predict.py", *args, log=tmp_path / "log"), saved_once(out))
    names = sorted(p.name for p in eight_photos.iterdir())
    rows = assert_rows_describe_their_folders(out, names)
    done = [n for n, r in rows.items() if r["status"] == "ok"]
    assert 1 <= len(done) < len(names)  # killed mid-run, with the photos done so far kept
    reference = rows_on_disk(uninterrupted["0"])
    assert all(rows[n] == reference[n] for n in done)
    assert start("predict.py", *args, log=tmp_path / "log").wait() == 0  # the same command again
    assert_same_outputs(files(out), files(uninterrupted["0"]))


def test_kill_9_of_a_rerun_leaves_no_less_than_before(trained_run, eight_photos, uninterrupted, tmp_path, kill_when):
    """A complete run, then a rerun with another threshold into the same folder, killed twice: before its first
    photo (nothing changes) and after a few photos (the new rows beside the earlier rows and outputs of the
    photos not reached, each row describing its folder); the third try ends as an uninterrupted run."""
    out = tmp_path / "pred"
    shutil.copytree(uninterrupted["0"], out)
    before = files(out)
    args = ["--data", eight_photos, "--model", trained_run / "model.pt", "--out", out, "--threshold", "5"]
    log = tmp_path / "log"
    kill_when(start("predict.py", *args, log=log), lambda: "predict:" in log.read_text())  # before a photo is done
    assert files(out) == before
    kill_when(start("predict.py", *args, log=log), saved_once(out, (out / "predictions.csv").read_bytes()))
    names = sorted(p.name for p in eight_photos.iterdir())
    rows = assert_rows_describe_their_folders(out, names)
    new, earlier = rows_on_disk(uninterrupted["5"]), rows_on_disk(uninterrupted["0"])
    kept = [n for n, r in rows.items() if r["status"] != "ok"]
    assert kept and len(kept) < len(names)
    for name, row in rows.items():
        if name in kept:  # the earlier run's row (only its status says it is kept) and outputs
            assert {**row, "status": "ok"} == earlier[name] and predict.KEPT in row["status"]
        else:
            assert row == new[name]
    folders = output_folders(names)
    for name in kept:
        prefix = folders[name] + os.sep
        assert {k: v for k, v in files(out).items() if k.startswith(prefix)} == {
            k: v for k, v in before.items() if k.startswith(prefix)}
    assert start("predict.py", *args, log=log).wait() == 0
    assert_same_outputs(files(out), files(uninterrupted["5"]))


def test_kill_9_of_training_leaves_the_earlier_run_whole(trained_run, demo_dir, tmp_path, kill_when):
    """train.py writes its three files at the end, each under a temporary name: killed while it featurises the
    photos, the earlier run's files stay byte for byte and no partial file is left; run again, it ends with the
    model of an uninterrupted run (there is no --resume: training is one pass of seconds to minutes)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = files(run)
    log = tmp_path / "log"
    args = ["--data", demo_dir, "--out", run, *TINY]
    kill_when(start("train.py", *args, log=log), lambda: "memory bank:" in log.read_text())
    assert files(run) == before and sorted(p.name for p in run.iterdir()) == sorted(before)
    assert start("train.py", *args, log=log).wait() == 0
    again, first = (torch.load(p / "model.pt", weights_only=True) for p in (run, trained_run))
    for key in ("bank", "bank_image", "image_desc"):
        assert torch.equal(again[key], first[key]), key
    assert again["threshold"] == first["threshold"] and np.isclose(again["deep_q95"], first["deep_q95"])
