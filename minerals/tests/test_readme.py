"""The quick start of minerals/README.md works as written after `make demo`: its python lines run in a folder that
holds what make demo-minerals leaves (runs/minerals_demo/: samples and a trained scratch/ run), with the user's
my_patches/ and a.jpg; its make lines resolve (make -n). And every script answers --help in well under 2 s without
importing PyTorch, torchvision, scikit-learn, SciPy or matplotlib, and shows no empty default."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "minerals" / "README.md"
SCRIPTS = ["predict.py", "evaluate.py", "train.py", "extract_samples.py", "bench.py", "report.py", "figures.py",
           "demo_data.py", "studies/learning_curve.py"]


def quick_start() -> list[str]:
    """The command lines of the README's first bash block, comments dropped."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_quick_start_holds_the_briefs_usage():
    lines = quick_start()
    assert "python minerals/predict.py --threshold 0.5 > results.json" in lines
    assert sum(line.startswith("python ") for line in lines) >= 4 and any(line.startswith("make ") for line in lines)


@pytest.mark.slow
def test_quick_start_commands_run_as_written_after_the_demo(run, samples, tmp_path):
    (tmp_path / "minerals").symlink_to(ROOT / "minerals")  # python minerals/<script>.py from this folder
    shutil.copytree(run, tmp_path / "runs" / "minerals_demo" / "scratch")  # make demo-minerals' run
    (tmp_path / "my_patches").mkdir()
    for p in sorted((samples / "patches").rglob("*.jpg"))[::10]:
        shutil.copyfile(p, tmp_path / "my_patches" / p.name)
    shutil.copyfile(next((samples / "patches" / "quartz").glob("*.jpg")), tmp_path / "a.jpg")
    ran = []
    for line in quick_start():
        if line.startswith("make "):
            done = subprocess.run(["make", "-n", *line.split()[1:]], cwd=ROOT, capture_output=True, text=True)
            assert done.returncode == 0, (line, done.stderr)
            continue
        assert line.startswith("python "), line
        done = subprocess.run(line.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (line, done.stderr[-2000:])
        results = json.loads((tmp_path / "results.json").read_text()) if "results.json" in line else {}
        assert all(set(r) == {"confidence", "result"} for r in results.values())
        ran.append(line)
    assert len(ran) >= 4 and (tmp_path / "runs" / "minerals_demo" / "scratch" / "eval" / "metrics.json").exists()
    assert "a.jpg" in json.loads((tmp_path / "results.json").read_text())  # the last predict line: the user's files


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_without_the_heavy_libraries(script):
    code = "\n".join(["import runpy, sys, time", "t = time.perf_counter()", "sys.argv = [sys.argv[1], '--help']",
                      "try:", "    runpy.run_path(sys.argv[0], run_name='__main__')", "except SystemExit as e:",
                      "    assert not e.code",
                      "heavy = {'torch', 'torchvision', 'sklearn', 'scipy', 'matplotlib', 'timm'} & set(sys.modules)",
                      "assert not heavy, heavy"])
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / "minerals" / script)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "(default: )" not in done.stdout and "(default: [])" not in done.stdout
    assert "(default: None)" not in done.stdout
