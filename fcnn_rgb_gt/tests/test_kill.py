"""kill -9 in the middle of predict.py (a batch) and of train.py: nothing complete is lost, nothing half-written
is left, and the rerun (predict) or --resume (train) ends with exactly the uninterrupted run's outputs."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnn_rgb_gt.predict import OUTPUT_FILES

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # every test here starts processes


def start(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "fcnn_rgb_gt" / script), *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(script: str, *args) -> None:
    proc = start(script, *args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "Traceback" not in err, err


def read_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def images(tmp_path_factory, pair_dir):
    """Eight 200 x 240 crops of the demo image."""
    folder = tmp_path_factory.mktemp("kill_images")
    rgb = Image.open(pair_dir / "rgb.png").convert("RGB")
    for i in range(8):
        rgb.resize((240, 200)).rotate(45 * i).save(folder / f"img_{i}.png")
    return folder


def test_predict_killed_mid_batch_loses_nothing_and_the_rerun_finishes_it(untrained_run, images, tmp_path, kill_when):
    ckpt, out = untrained_run / "best.pt", tmp_path / "out"
    base = ["--checkpoint", ckpt, "--image", images, "--threads", "1"]
    finish("predict.py", *base, "--out", out, "--threshold", "1.0")  # the earlier run: no building anywhere
    earlier = read_rows(out / "predictions.csv")
    assert len(earlier) == 8

    proc = start("predict.py", *base, "--out", out, "--threshold", "0")  # this run: all building
    kill_when(proc, lambda: any(r["status"] == "predicted" and r["threshold"] == "0.0"
                                for r in read_rows(out / "predictions.csv")))
    rows = read_rows(out / "predictions.csv")
    assert [r["image"] for r in rows] == [r["image"] for r in earlier]  # no row lost
    done = [r for r in rows if r["status"] == "predicted"]
    assert done and len(done) < 8
    for r in rows:  # each row describes its folder's files, which are complete
        files = out / r["name"]
        if r["status"] == "stopped while writing":  # the image being written at the kill
            continue
        assert r["status"] in ("predicted", "earlier run, not reached"), r
        assert r["threshold"] == ("0.0" if r["status"] == "predicted" else "1.0")
        mask = np.asarray(Image.open(files / "predictions_mask.png"))
        assert (mask == (0 if r["status"] == "predicted" else 255)).all(), r
        for name in OUTPUT_FILES[:3]:
            Image.open(files / name).load()

    finish("predict.py", *base, "--out", out, "--threshold", "0")  # run again: finishes it
    finish("predict.py", *base, "--out", tmp_path / "whole", "--threshold", "0")  # never interrupted
    assert (out / "predictions.csv").read_bytes() == (tmp_path / "whole" / "predictions.csv").read_bytes()
    for r in read_rows(out / "predictions.csv"):
        for name in OUTPUT_FILES[:3]:
            assert (out / r["name"] / name).read_bytes() == (tmp_path / "whole" / r["name"] / name).read_bytes()
    assert not leftovers(out)


def test_train_killed_mid_run_resumes_to_the_uninterrupted_runs_weights(pair_dir, tmp_path, kill_when):
    """kill -9 after epoch 2's checkpoint (during epoch 3 or while saving it), then --resume: the same weights,
    optimiser state and log, bit for bit, as a run that was never stopped; no temporary file left."""
    args = ["--data", pair_dir, "--epochs", "6", "--tile", "32", "--batch-size", "4", "--threads", "1"]
    finish("train.py", *args, "--out", tmp_path / "whole")

    cut = tmp_path / "cut"
    proc = start("train.py", *args, "--out", cut)
    kill_when(proc, lambda: len(read_rows(cut / "log.csv")) >= 2)
    last = torch.load(cut / "last.pt", weights_only=True)  # whole: the kill never leaves a cut-off file
    assert 2 <= last["epoch"] < 6
    finish("train.py", *args, "--out", cut, "--resume")

    for name in ("last.pt", "best.pt"):
        whole = torch.load(tmp_path / "whole" / name, weights_only=True)
        resumed = torch.load(cut / name, weights_only=True)
        assert whole["epoch"] == resumed["epoch"] and whole["history"][-1] == resumed["history"][-1] | {
            "seconds": whole["history"][-1]["seconds"]}
        assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"]), name
        states = whole["optimizer"]["state"], resumed["optimizer"]["state"]
        assert states[0].keys() == states[1].keys()
        assert all(torch.equal(states[0][p][k], states[1][p][k]) for p in states[0] for k in states[0][p])
    without_times = [{k: v for k, v in r.items() if k != "seconds"} for r in read_rows(cut / "log.csv")]
    assert without_times == [{k: v for k, v in r.items() if k != "seconds"}
                             for r in read_rows(tmp_path / "whole" / "log.csv")]
    assert not leftovers(cut)
