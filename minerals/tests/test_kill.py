"""kill -9 in the middle of each long-running tool that writes outputs: nothing complete is lost, and the rerun
(or train.py --resume) ends with exactly the outputs of an uninterrupted run."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def start(script: str, *args, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, str(ROOT / "minerals" / script), *map(str, args)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=f)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_predict_killed_keeps_the_earlier_results_and_the_rerun_ends_like_an_uninterrupted_run(run, samples,
                                                                                               tmp_path, kill_when):
    batch = tmp_path / "batch"
    batch.mkdir()
    for k, p in enumerate(sorted((samples / "patches").rglob("*.jpg")) * 4):  # enough patches to be stopped
        shutil.copyfile(p, batch / f"{k:04d}_{p.name}")
    args = [batch, "--checkpoint", run / "best.pt", "--threads", "1", "--batch-size", "4"]
    whole = tmp_path / "whole.json"
    assert subprocess.run([sys.executable, str(ROOT / "minerals" / "predict.py"), *map(str, args), "--out",
                           str(whole)], cwd=ROOT, capture_output=True).returncode == 0
    out = tmp_path / "results.json"
    (tmp_path / ".results.k9x2m4q7.tmp.json").write_text('{"half": ')  # a kill inside the final write leaves this
    out.write_text('{"earlier.jpg": {"confidence": 0.9, "result": "quartz"}}\n')
    earlier = out.read_bytes()
    log = tmp_path / "predict.log"
    proc = start("predict.py", *args, "--out", out, log=log)
    kill_when(proc, lambda: "predict:" in log.read_text())  # the progress bar: patches being classified
    assert out.read_bytes() == earlier
    proc = start("predict.py", *args, "--out", out, log=log)
    assert proc.wait(timeout=600) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


@pytest.mark.slow
def test_extract_killed_then_rerun_ends_with_the_uninterrupted_runs_patches(photos, tmp_path, kill_when):
    args = ["--data", photos, "--patch-size", "64"]
    assert subprocess.run([sys.executable, str(ROOT / "minerals" / "extract_samples.py"), *map(str, args), "--out",
                           str(tmp_path / "whole")], cwd=ROOT, capture_output=True).returncode == 0
    out, log = tmp_path / "cut", tmp_path / "extract.log"
    proc = start("extract_samples.py", *args, "--out", out, log=log)
    kill_when(proc, lambda: len(list(out.glob("patches/*/*.jpg"))) >= 10)
    assert not (out / "index.csv").exists()  # written at the end only: no index of a partial extraction
    folder = next(out.glob("patches/*/*.jpg")).parent
    (folder / ".0001_x_p0.abcd.tmp.jpg").write_bytes(b"half a")  # what a kill inside a write may leave
    (out / ".index.abcd.tmp.csv").write_text("patch,label\n")
    proc = start("extract_samples.py", *args, "--out", out, log=log)
    assert proc.wait(timeout=600) == 0
    assert tree(out) == tree(tmp_path / "whole")


@pytest.mark.slow
def test_train_killed_then_resumed_ends_with_the_uninterrupted_runs_weights(samples, tmp_path, kill_when):
    """Killed after epoch 2 of 4 was saved (possibly inside epoch 3): --resume last.pt ends bit for bit with the
    weights, log and threshold of the same run never stopped (one process, CPU)."""
    args = ["--data", samples, "--epochs", "4", "--img-size", "32", "--width", "0.5", "--batch-size", "16",
            "--threads", "1", "--no-export", "--time-budget-min", "0"]
    done = subprocess.run([sys.executable, str(ROOT / "minerals" / "train.py"), *map(str, args), "--out",
                           str(tmp_path / "whole")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    out, log = tmp_path / "cut", tmp_path / "train.log"
    proc = start("train.py", *args, "--out", out, log=log)
    kill_when(proc, lambda: (out / "log.csv").exists() and len((out / "log.csv").read_text().splitlines()) >= 3)
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] >= 2  # saved before the log row
    (out / ".last.k9x2m4q7.tmp.pt").write_bytes(b"half a checkpoint")  # what a kill inside torch.save leaves
    proc = start("train.py", "--resume", out / "last.pt", "--data", samples, "--out", out, "--threads", "1",
                 "--no-export", log=log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-2000:]
    for name in ("last.pt", "best.pt"):
        whole, cut = (torch.load(d / name, weights_only=True) for d in (tmp_path / "whole", out))
        assert whole["epoch"] == cut["epoch"] and whole["threshold"] == cut["threshold"]
        assert all(torch.equal(whole["model"][k], cut["model"][k]) for k in whole["model"]), name
    assert [p.name for p in out.iterdir() if ".tmp" in p.name] == []
    assert (out / "val_predictions.csv").read_bytes() == (tmp_path / "whole" / "val_predictions.csv").read_bytes()
