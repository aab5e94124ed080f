"""The commands of README.md's "How to run" and "More than one machine" blocks work as written: the python ones
run on demo photos (FOLDER: a generated demo folder, runs/x, /tmp/fabric and /tmp/new_woods: temporary
folders), the make ones resolve (make -n); and every script answers --help without importing PyTorch."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "wood_anomaly" / "README.md"
SCRIPTS = ["train.py", "predict.py", "evaluate.py", "bench.py", "figures.py", "demo_data.py", "protocols.py",
           "studies/fusion_weights.py"]


def test_the_readme_lists_the_commands_this_test_runs(readme_commands):
    commands = readme_commands(README)
    assert sum(c.startswith("python ") for c in commands) >= 6 and any(c.startswith("make ") for c in commands)


@pytest.mark.slow
def test_readme_commands_run_as_written(demo_dir, tmp_path, readme_commands):
    """Each python command as written, with FOLDER, runs/x, /tmp/fabric and /tmp/new_woods pointing at temporary
    folders (the sharded predict once per shard I of N = 2); torchrun lines are left to test_scale_out (same code, other
    launcher); make lines are resolved with make -n (the real data of bench-wood is not in the tests)."""
    subs = {"FOLDER": shlex.quote(str(demo_dir)), "runs/x": shlex.quote(str(tmp_path / "runs" / "x")),
            "/tmp/fabric": shlex.quote(str(tmp_path / "fabric")),
            "/tmp/new_woods": shlex.quote(str(tmp_path / "new_woods")), "I/N": "{shard}"}
    ran = []
    for line in readme_commands(README):
        if line.startswith("torchrun"):
            continue
        for old, new in subs.items():
            line = line.replace(old, new)
        argv = shlex.split(line)
        if argv[0] == "make":
            done = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True)
            assert done.returncode == 0, (line, done.stderr)
            continue
        assert argv[0] == "python", line
        for shard in (["0/2", "1/2"] if "{shard}" in line else [None]):
            cmd = [sys.executable, *(a.replace("{shard}", shard or "") for a in argv[1:])]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0 and "Traceback" not in done.stderr, (line, done.stderr[-2000:])
            ran.append(argv[1])
    assert {"wood_anomaly/train.py", "wood_anomaly/predict.py", "wood_anomaly/evaluate.py", "-m"} <= set(ran)
    pred = tmp_path / "runs" / "x" / "pred"
    assert (pred / "predictions.csv").read_text().count("\n") == 5  # 4 demo photos, merged from the 2 shards


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_without_pytorch(script, check_help):
    """--help parses the options before any framework is imported (2-3 s for PyTorch alone, more under load)."""
    check_help(ROOT / "wood_anomaly" / script, {"torch", "timm", "sklearn", "scipy"})
