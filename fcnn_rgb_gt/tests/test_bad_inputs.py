"""predict.py and train.py over the shared bad-input corpus (common/tests/bad_inputs.py): lossless variants give
the plain file's exact result, lossy ones are processed, broken entries (empty, truncated, text, a declared
40000 x 40000 PNG, a folder and a dead link named like images, 1x1) are named with the reason while the rest of
the batch is done, every path given is counted and has its row, and no traceback reaches the user."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.tests.bad_inputs import BROKEN, EXACT, few_colours, write_corpus
from fcnn_rgb_gt import predict, train
from fcnn_rgb_gt.config import TrainConfig
from fcnn_rgb_gt.data import data_fingerprint, load_data

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ("predictions.jpg", "predictions_mask.png", "predictions_overlay.jpg")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus around a 64 x 96 image of at most 64 colours (its palette PNG is lossless too), and a gt.png
    of its size holding both classes."""
    folder = tmp_path_factory.mktemp("fcnn corpus")
    base = few_colours((64, 96), seed=3)
    gt = np.full((64, 96), 255, np.uint8)
    gt[10:30, 20:50] = 0  # a building
    gt_path = tmp_path_factory.mktemp("fcnn corpus gt") / "gt.png"
    Image.fromarray(gt).save(gt_path)
    return folder, write_corpus(folder, base), gt_path


def rows_by_file(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return {Path(r["image"]).name: r for r in csv.DictReader(f)}


def check_batch(out: Path, cases, stdout: str, stderr: str) -> None:
    """The outcome of one batch over the whole corpus."""
    rows = rows_by_file(out / "predictions.csv")
    assert sorted(rows) == sorted(c.name for c in cases)  # every entry has its row, a bad one too
    plain = (out / rows["plain.png"]["name"] / "predictions_mask.png").read_bytes()
    for case in cases:
        row = rows[case.name]
        if case.kind == BROKEN:
            assert row["status"] == "failed" and case.name in row["error"] and case.reason in row["error"].lower()
            assert any(line.startswith("error: ") and case.name in line and case.reason in line.lower()
                       for line in stderr.splitlines()), case.name
            assert not row["name"] or not (out / row["name"]).exists()  # no output folder
            continue
        assert row["status"] == "predicted" and not row["error"], row
        folder = out / row["name"]
        assert all((folder / name).is_file() for name in OUTPUTS), case.name
        if case.kind == EXACT:  # decodes to the very pixels of plain.png: the very same prediction
            assert (folder / "predictions_mask.png").read_bytes() == plain, case.name
            assert {k: v for k, v in row.items() if k not in ("image", "name")} == {
                k: v for k, v in rows["plain.png"].items() if k not in ("image", "name")}
    broken = sum(c.kind == BROKEN for c in cases)
    assert f"{len(cases)} of {len(cases)} inputs" in stdout
    assert f"{len(cases) - broken} predicted, {broken} failed" in stdout
    assert "Traceback" not in stderr


def test_predict_over_the_corpus_folder(untrained_run, corpus, tmp_path, capsys):
    folder, cases, _ = corpus
    code = predict.main(["--checkpoint", str(untrained_run / "best.pt"), "--image", str(folder),
                         "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2  # some inputs failed
    check_batch(tmp_path / "out", cases, captured.out, captured.err)


def test_predict_over_every_corpus_file_given(untrained_run, corpus, tmp_path, capsys):
    """Each entry named on --image (the folder named like an image, the dead link too): each counted, each named
    if bad, and the good images' output folders named as without the bad ones."""
    folder, cases, _ = corpus
    ckpt = str(untrained_run / "best.pt")
    code = predict.main(["--checkpoint", ckpt, "--image", *(str(folder / c.name) for c in cases),
                         "--out", str(tmp_path / "all")])
    captured = capsys.readouterr()
    assert code == 2
    check_batch(tmp_path / "all", cases, captured.out, captured.err)
    good = [str(folder / c.name) for c in cases if c.kind != BROKEN]
    assert predict.main(["--checkpoint", ckpt, "--image", *good, "--out", str(tmp_path / "good")]) == 0
    names = {Path(r["image"]).name: r["name"] for r in rows_by_file(tmp_path / "all" / "predictions.csv").values()
             if r["status"] == "predicted"}
    assert names == {Path(r["image"]).name: r["name"] for r in rows_by_file(tmp_path / "good" /
                                                                              "predictions.csv").values()}


def test_predict_each_corpus_file_alone(untrained_run, corpus, tmp_path, capsys):
    folder, cases, _ = corpus
    ckpt = str(untrained_run / "best.pt")
    masks = {}
    for i, case in enumerate(cases):
        out = tmp_path / f"out{i}"
        code = predict.main(["--checkpoint", ckpt, "--image", str(folder / case.name), "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        if case.kind == BROKEN:
            assert code == 2 and len(err) == 1, (case.name, err)
            assert case.name in err[0] and case.reason in err[0].lower(), err
            assert not list(out.rglob("predictions*.jpg"))  # no prediction written
        else:
            # a gray image is predicted with a warning (the model reads colour), every other one without a word
            assert code == 0 and all(line.startswith("warning: ") and "no colour" in line for line in err), \
                (case.name, err)
            masks[case.name] = (out / "predictions_mask.png").read_bytes()
    assert all(masks[c.name] == masks["plain.png"] for c in cases if c.kind == EXACT)


def test_predict_a_folder_without_images_is_counted_and_named(untrained_run, corpus, tmp_path, capsys):
    """A folder named like an image (or any folder without images) given on --image contributed nothing, and the
    count said '3 of 3 images' for 4 paths."""
    folder, _, _ = corpus
    empty = tmp_path / "new.jpg"
    empty.mkdir()
    ckpt = str(untrained_run / "best.pt")
    good = [str(folder / name) for name in ("plain.png", "photo.jpg", "gray.png")]
    code = predict.main(["--checkpoint", ckpt, "--image", *good, str(empty), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and "4 of 4 inputs" in captured.out and "3 predicted, 1 failed" in captured.out
    errors = [line for line in captured.err.splitlines() if not line.startswith(f"warning: {folder / 'gray.png'}")]
    assert errors == [f"error: {empty}: a folder without any image file in it (.jpg .jpeg .png .bmp .tif .tiff .gif "
                      ".webp)"]
    rows = rows_by_file(tmp_path / "out" / "predictions.csv")
    assert sorted(r["name"] for r in rows.values() if r["status"] == "predicted") == ["gray", "photo", "plain"]


@pytest.mark.slow
def test_predict_cli_over_the_corpus_in_a_process(untrained_run, corpus, tmp_path):
    folder, cases, _ = corpus
    done = subprocess.run([sys.executable, str(ROOT / "fcnn_rgb_gt" / "predict.py"), "--checkpoint",
                           str(untrained_run / "best.pt"), "--image", str(folder), "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    check_batch(tmp_path / "out", cases, done.stdout, done.stderr)


@pytest.mark.parametrize("role", ["--rgb", "--gt"])
def test_train_refuses_each_broken_corpus_file_in_one_line(role, corpus, tmp_path, capsys):
    """Each broken entry as the training image or its ground truth: one line naming it with the reason, status 2,
    nothing written."""
    folder, cases, gt = corpus
    for case in (c for c in cases if c.kind == BROKEN):
        pair = {"--rgb": folder / "plain.png", "--gt": gt, role: folder / case.name}
        out = tmp_path / f"run {case.name}"
        code = train.main(["--rgb", str(pair["--rgb"]), "--gt", str(pair["--gt"]), "--out", str(out),
                           "--epochs", "1", "--tile", "32"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and case.name in err[0], (case.name, err)
        reason = "mask channels differ" if role == "--gt" and case.name == "one_pixel.png" else case.reason
        assert reason in err[0].lower(), err
        assert not out.exists() or not any(out.iterdir())


def test_train_reads_every_readable_corpus_file_and_lossless_ones_exactly(corpus):
    """The pair train.py trains on (its data fingerprint): the same as plain.png's for every lossless variant."""
    folder, cases, gt = corpus

    def fingerprint(name):
        image, mask, *_ = load_data(TrainConfig(rgb=str(folder / name), gt=str(gt)))
        return data_fingerprint(image, mask)

    plain = fingerprint("plain.png")
    for case in (c for c in cases if c.kind != BROKEN):
        assert (fingerprint(case.name) == plain) == (case.kind == EXACT), case.name


@pytest.mark.slow
def test_train_on_a_lossless_variant_gives_the_same_weights(corpus, tmp_path):
    import torch

    folder, _, gt = corpus
    for name in ("plain.png", "exif_rotated.png"):
        assert train.main(["--rgb", str(folder / name), "--gt", str(gt), "--out", str(tmp_path / name),
                           "--epochs", "1", "--tile", "32", "--batch-size", "4"]) == 0
    a, b = (torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]
            for name in ("plain.png", "exif_rotated.png"))
    assert all(torch.equal(a[k], b[k]) for k in a)
