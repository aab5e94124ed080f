"""The commands of README.md's bash blocks work as written: the scripts' lines run in the README's order on the
demo pair (data/fcnn -> the test's demo pair, runs/ -> a temporary folder; a line that relies on the default
--data / --out / --checkpoint gets the same paths spelled out), the make lines resolve (make -n); and every
script answers --help without importing PyTorch."""
from __future__ import annotations

import glob
import shlex
import subprocess
from pathlib import Path

import pytest

from fcnn_rgb_gt import demo_data, predict, train

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "fcnn_rgb_gt" / "README.md"
SCRIPTS = ["fcnn_rgb_gt/train.py", "fcnn_rgb_gt/predict.py", "fcnn_rgb_gt/bench.py", "fcnn_rgb_gt/figures.py",
           "fcnn_rgb_gt/demo_data.py", "fcnn_rgb_gt/studies/ladder.py", "fcnn_rgb_gt/studies/seams.py"]


def test_the_readme_lists_the_commands_this_test_runs(readme_commands):
    commands = readme_commands(README)
    scripts = [c.split()[1] for c in commands if c.startswith(".venv-torch/bin/python ")]
    assert scripts.count("fcnn_rgb_gt/train.py") >= 4 and scripts.count("fcnn_rgb_gt/predict.py") >= 4
    assert sum(c.startswith("make ") for c in commands) >= 5


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path, capsys, readme_commands):
    pair_dir = demo_data.write(tmp_path / "data", seed=2, size=(112, 144))  # small: the lines train 30 epochs in all
    runs = tmp_path / "runs"
    ran = []
    for line in readme_commands(README):
        words = shlex.split(line.replace("data/fcnn", str(pair_dir)).replace("runs/", f"{runs}/"))
        argv = [path for word in words for path in (sorted(glob.glob(word)) if "*" in word else [word])]  # bash
        if argv[0] == "make":
            done = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True)
            assert done.returncode == 0, (line, done.stderr)
            continue
        if argv[0] != ".venv-torch/bin/python":  # torchrun: test_distributed runs the same code
            continue
        script, args = argv[1], argv[2:]
        if script.endswith("train.py"):
            args += [] if {"--data", "--rgb"} & set(args) or "--resume" in args else ["--data", str(pair_dir)]
            args += [] if "--out" in args else ["--out", str(runs / "fcnn")]
            code = train.main(args)
        else:
            args += [] if "--checkpoint" in args else ["--checkpoint", str(runs / "fcnn" / "best.pt")]
            code = predict.main(args)
        assert code == 0, (line, capsys.readouterr().err[-2000:])
        ran.append(script)
    assert ran.count("fcnn_rgb_gt/train.py") == 4 and ran.count("fcnn_rgb_gt/predict.py") == 4
    assert (runs / "fcnn_x" / "log.csv").read_text().count("\n") == 1 + 6  # 4 epochs, resumed to 6
    assert (runs / "fcnn_batch" / "predictions.csv").read_text().count("\n") == 1 + 2


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_without_pytorch(script, check_help):
    """--help parses the options before PyTorch (2-9 s to import on a loaded machine) or scipy is imported."""
    check_help(ROOT / script, {"torch", "scipy", "sklearn", "matplotlib"})
