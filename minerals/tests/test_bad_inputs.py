"""Every command-line tool of minerals over the shared bad-input corpus (common/tests/bad_inputs.py) and bad
checkpoints: a broken entry is named with its reason and counted, the rest is processed (a lossless variant gives
exactly what plain.png gives), the exit status is the documented one, no traceback, earlier outputs intact."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.tests.bad_inputs import BROKEN, EXACT, few_colours, write_corpus
from minerals.config import MINERALS
from minerals.tests.checkpoints import bad_checkpoint

ROOT = Path(__file__).resolve().parents[2]
NOTHING = {"confidence": 0.0, "result": "unknown"}


def cli(script: str, *args, cwd=ROOT) -> tuple[int, str, str]:
    done = subprocess.run([sys.executable, str(ROOT / "minerals" / script), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)
    return done.returncode, done.stdout, done.stderr


def named_with_reason(err: str, case) -> bool:
    """A stderr line names the case's file and holds its reason word."""
    return any(case.name in line and case.reason in line.lower() for line in err.splitlines())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "patches"
    return folder, write_corpus(folder, few_colours((64, 96)))


@pytest.mark.slow
@pytest.mark.parametrize("as_files", [False, True], ids=["folder", "files"])
def test_predict_over_the_corpus(run, corpus, tmp_path, as_files):
    folder, cases = corpus
    inputs = [folder / c.name for c in cases] if as_files else [folder]
    rc, out, err = cli("predict.py", *inputs, "--checkpoint", run / "best.pt", "--threads", "1",
                       "--out", tmp_path / "results.json")
    res = json.loads((tmp_path / "results.json").read_text())
    assert rc == 1 and out == "" and "Traceback" not in err, err
    given = [c for c in cases if not (as_files and c.name == "folder.jpg")]  # a folder given is searched ...
    if as_files:
        assert "folder.jpg: no image files" in err  # ... and said to hold none
    assert sorted(res) == sorted(c.name for c in given) and f"{len(given)} files" in err
    broken = [c for c in given if c.kind == BROKEN]
    assert f"{len(given) - len(broken)} classified, {len(broken)} unreadable" in err
    for c in given:
        if c.kind == BROKEN:
            assert res[c.name] == NOTHING and named_with_reason(err, c), (c, err)
        elif c.kind == EXACT:
            assert res[c.name] == res["plain.png"], c
        else:
            assert res[c.name]["result"] in MINERALS + ["unknown"] and 0 < res[c.name]["confidence"] <= 1


@pytest.mark.slow
def test_extract_over_the_corpus(photos, tmp_path):
    """Photos of the corpus among good ones: the broken ones (incl. a 1x1 photo) are named and counted, every lossless
    variant gives plain.png's patch byte for byte, the lossy ones a patch."""
    data = tmp_path / "data"
    shutil.copytree(photos / "quartz", data / "quartz")
    cases = write_corpus(data / "pyrite", few_colours((64, 96)))
    rc, _, err = cli("extract_samples.py", "--data", data, "--out", tmp_path / "samples", "--no-sheets")
    assert rc == 0 and "Traceback" not in err, err
    broken = [c for c in cases if c.kind == BROKEN]
    assert f"{len(broken)} of {len(cases) + len(list((data / 'quartz').iterdir()))} photos skipped" in err
    with open(tmp_path / "samples" / "index.csv", newline="") as f:
        positive = {r["source"]: r["patch"] for r in csv.DictReader(f) if r["kind"] == "positive"}
    patch = {name: (tmp_path / "samples" / "patches" / p).read_bytes() for name, p in positive.items()}
    for c in cases:
        if c.kind == BROKEN:
            assert f"pyrite/{c.name}" not in patch and named_with_reason(err, c), (c, err)
        elif c.kind == EXACT:
            assert patch[f"pyrite/{c.name}"] == patch["pyrite/plain.png"], c
        else:
            assert f"pyrite/{c.name}" in patch, c


@pytest.mark.slow
def test_evaluate_over_the_corpus(run, samples, corpus, tmp_path):
    folder, cases = corpus
    labelled = tmp_path / "labelled"
    shutil.copytree(folder, labelled / "pyrite", symlinks=True)
    shutil.copytree(samples / "patches" / "quartz", labelled / "quartz")
    rc, _, err = cli("evaluate.py", "--checkpoint", run / "best.pt", "--data", labelled, "--out", tmp_path / "eval",
                     "--threads", "1")
    assert rc == 1 and "Traceback" not in err, err
    broken = [c for c in cases if c.kind == BROKEN]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    n_quartz = len(list((labelled / "quartz").iterdir()))
    assert metrics["unreadable"] == len(broken) and metrics["n_patches"] == len(cases) - len(broken) + n_quartz
    assert all(named_with_reason(err, c) for c in broken) and f"{len(broken)} unreadable, named above" in err
    assert 0 <= metrics["ece"] <= 1 and (tmp_path / "eval" / "reliability.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["empty", "random", "other_task", "evil_torch", "dangling"])
def test_predict_and_evaluate_with_a_bad_checkpoint_keep_the_earlier_results(samples, tmp_path, kind):
    """One line naming the file and the reason, exit status 2, and the earlier results.json left as it was."""
    ck = tmp_path / "best.pt"
    says = bad_checkpoint(ck, kind)
    earlier = tmp_path / "results.json"
    earlier.write_text('{"earlier.jpg": {"confidence": 0.9, "result": "quartz"}}\n')
    patch = next((samples / "patches" / "quartz").glob("*.jpg"))
    for script, args in (("predict.py", [patch, "--out", earlier]), ("evaluate.py", ["--data", samples])):
        rc, out, err = cli(script, *args, "--checkpoint", ck, "--threads", "1")
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and out == "" and len(lines) == 1 and str(ck) in lines[0] and says in lines[0].lower(), err
        assert "weights_only" not in err and not (tmp_path / "pwned").exists()
    assert earlier.read_text().startswith('{"earlier.jpg"')
