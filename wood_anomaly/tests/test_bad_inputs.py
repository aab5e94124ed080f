"""Every command-line tool of the task over the shared bad-input corpus (common/tests/bad_inputs.py) and the
task's own bad files: lossless variants give the plain file's exact result, lossy ones are processed, broken
entries are named with the reason while the rest of the batch is done, and no traceback reaches the user."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.io import save_image
from common.tests.bad_inputs import BROKEN, EXACT, READABLE, few_colours, png_claiming, write_corpus
from wood_anomaly import evaluate
from wood_anomaly.config import output_folders
from wood_anomaly.tests.conftest import TINY, assert_same_maps

ROOT = Path(__file__).resolve().parents[2]


def run_cli(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "wood_anomaly" / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def table(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return {r["image"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus around a 192 x 256 photo of at most 64 colours (so that its palette PNG is lossless too)."""
    folder = tmp_path_factory.mktemp("wood corpus")
    return folder, write_corpus(folder, few_colours((192, 256), seed=4))


@pytest.mark.slow
def test_predict_over_the_corpus(trained_run, corpus, tmp_path):
    folder, cases = corpus
    done = run_cli("predict.py", "--data", folder, "--model", trained_run / "model.pt", "--out", tmp_path / "pred")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    rows = table(tmp_path / "pred" / "predictions.csv")
    assert list(rows) == [c.name for c in cases]  # every entry has its row, in file-name order
    folders = output_folders(list(rows))
    plain = np.load(tmp_path / "pred" / "plain" / "anomaly_map.npy")
    for case in cases:
        row, out = rows[case.name], tmp_path / "pred" / folders[case.name]
        if case.kind == BROKEN:
            assert row["label"] == "error" and case.name in row["status"] and case.reason in row["status"].lower()
            assert any(line.startswith(f"error: {folder / case.name}: ") and case.reason in line.lower()
                       for line in done.stderr.splitlines()), case.name
            assert not (out / "preds.png").exists()
            continue
        assert row["status"] == "ok" and (out / "preds.png").is_file(), row
        if case.kind == EXACT:  # decodes to the very pixels of plain.png: the same result
            assert_same_maps(np.load(out / "anomaly_map.npy"), plain, case.name)
            assert {k: v for k, v in row.items() if k != "image"} == {
                k: v for k, v in rows["plain.png"].items() if k != "image"}
    broken = sum(c.kind == BROKEN for c in cases)
    assert f"{len(cases) - broken} photos -> " in done.stdout and f"; {broken} failed" in done.stdout


@pytest.mark.slow
def test_train_over_the_corpus(corpus, tmp_path):
    folder, cases = corpus
    done = run_cli("train.py", "--data", folder, "--out", tmp_path / "run", *TINY)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    broken = [c for c in cases if c.kind == BROKEN]
    for case in broken:
        assert any(line.startswith("skipping ") and case.name in line and case.reason in line.lower()
                   for line in done.stderr.splitlines()), case.name
    used = len(cases) - len(broken)
    assert f"from {used} of {len(cases)} photos ({len(broken)} skipped" in done.stdout
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train_images"] == [c.name for c in cases if c.kind != BROKEN] and len(config["skipped"]) == 8
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == used + 1


@pytest.mark.slow
def test_train_with_no_usable_photo_is_one_line(tmp_path):
    cases = write_corpus(tmp_path / "bad", few_colours(), broken=True)
    for case in cases:
        if case.kind != BROKEN:
            (tmp_path / "bad" / case.name).unlink()
    done = run_cli("train.py", "--data", tmp_path / "bad", "--out", tmp_path / "run", *TINY)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"no usable image in {tmp_path / 'bad'} (reasons above)"
    assert not (tmp_path / "run" / "model.pt").exists()


def hand_made_predictions(pred: Path, names: list[str], shape: tuple[int, int]) -> np.ndarray:
    """A predict.py output folder for ``names`` without a model: one smooth map (and its mask) for every photo."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    score = (np.sin(yy / 9.0) + np.cos(xx / 7.0)).astype(np.float32)
    folders = output_folders(names)
    pred.mkdir(parents=True, exist_ok=True)
    with open(pred / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "score", "label", "anomalous_area_px", "anomalous_area_frac", "status"])
        for n in names:
            (pred / folders[n]).mkdir(parents=True)
            np.save(pred / folders[n] / "anomaly_map.npy", score.astype(np.float16))
            save_image(pred / folders[n] / "preds.png", (score > 1).astype(np.uint8) * 255)
            writer.writerow([n, "1.5", "anomalous", int((score > 1).sum()), "0.1", "ok"])
    return score


def test_evaluate_over_a_corpus_of_masks(tmp_path, capsys):
    """The corpus as the mask folder: lossless masks score as plain.png does, lossy ones are scored, broken ones
    (and a 1x1 mask, whose size differs from the map's) are named and listed under skipped."""
    mask = np.zeros((64, 96), np.uint8)
    mask[20:40, 30:70] = 255
    cases = write_corpus(tmp_path / "masks", np.repeat(mask[..., None], 3, axis=2))
    names = [c.name for c in cases]
    hand_made_predictions(tmp_path / "pred", names, mask.shape)
    result = evaluate.main(["--pred", str(tmp_path / "pred"), "--masks", str(tmp_path / "masks"), "--data",
                            str(tmp_path)])
    err = capsys.readouterr().err
    skipped = {s["image"]: s["reason"] for s in result["skipped"]}
    broken = {c.name: ("differ in size" if c.name == "one_pixel.png" else c.reason) for c in cases if c.kind == BROKEN}
    assert set(skipped) == set(broken)
    for name, reason in broken.items():
        assert reason in skipped[name].lower()
        assert any(line.startswith(f"skipping {name}: ") for line in err.splitlines())
    assert result["photos_with_masks"] == sum(c.kind in (EXACT, READABLE) for c in cases)
    single = {}
    for case in [c for c in cases if c.kind == EXACT]:  # each lossless mask alone: the figures of plain.png
        one = tmp_path / f"one {case.name}"
        (one / "masks").mkdir(parents=True)
        (one / "masks" / case.name).symlink_to(tmp_path / "masks" / case.name)
        hand_made_predictions(one, [case.name], mask.shape)
        single[case.name] = evaluate.evaluate(one, one / "masks", None)
    assert all(m == single["plain.png"] for m in single.values())


def test_evaluate_names_unusable_maps(tmp_path, capsys):
    names = ["good.png", "empty.png", "text.png", "nan.png", "three_d.png", "objects.png", "missing.png"]
    hand_made_predictions(tmp_path / "pred", names, (32, 48))
    for n in names:
        save_image(tmp_path / "masks" / n, np.zeros((32, 48), np.uint8))
    maps = {n: tmp_path / "pred" / Path(n).stem / "anomaly_map.npy" for n in names}
    maps["empty.png"].write_bytes(b"")
    maps["text.png"].write_text("not an array")
    np.save(maps["nan.png"], np.full((32, 48), np.nan, np.float16))
    np.save(maps["three_d.png"], np.zeros((32, 48, 3), np.float16))
    np.save(maps["objects.png"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
    maps["missing.png"].unlink()
    result = evaluate.evaluate(tmp_path / "pred", tmp_path / "masks", None)
    skipped = {s["image"]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == set(names) - {"good.png"} and result["photos_with_masks"] == 1
    assert all(reason.startswith(str(maps[n])) for n, reason in skipped.items())
    assert "NaN" in skipped["nan.png"] and "not found" in skipped["missing.png"] and "2-D" in skipped["three_d.png"]
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("content, reason", [
    (b"", "no column image"),
    (b"\xff\xfe\x00garbage", "not a UTF-8 text CSV"),
    (b"name,value\nx.png,1\n", "no column image"),
    (b"image,score,label,status\nx.png,,anomalous,ok\n", "has status ok but the score ''"),
    (b"image,score,label,status\n,1.0,anomalous,ok\n", "a row without an image name"),
])
def test_evaluate_refuses_an_unusable_predictions_table_in_one_line(tmp_path, content, reason):
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "predictions.csv").write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--pred", str(tmp_path / "pred"), "--data", str(tmp_path)])
    message = str(exc.value.code)
    assert message.startswith(f"error: {tmp_path / 'pred' / 'predictions.csv'}") and reason in message, message
    assert "\n" not in message


def test_a_declared_huge_mask_is_refused_before_decoding(tmp_path):
    hand_made_predictions(tmp_path / "pred", ["board.jpg"], (32, 48))
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "board.png").write_bytes(png_claiming(40000, 40000))
    result = evaluate.evaluate(tmp_path / "pred", tmp_path / "masks", None)
    assert "too large" in result["skipped"][0]["reason"] and "pixel_auroc" not in result
