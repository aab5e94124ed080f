"""Bad input, faults and interrupted runs: the shared bad-input corpus (common/tests/bad_inputs.py) through the
training check and test.py, mask-table dialects, unusable model files, and kill -9 of test.py and train.py."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pandas as pd
import pytest

from airbus_ships.data import read_mask_csv, read_mask_table
from common.tests.bad_inputs import BROKEN, EXACT, READABLE, few_colours, write_corpus


def corpus_768(folder):
    """The corpus at Kaggle's 768x768 (the size training wants) and its cases."""
    base = few_colours((768, 768))
    return base, write_corpus(folder, base)


# ------------------------------------------------------------------------------------------------ mask tables
def write_dialect(src, dst, *, bom=False, crlf=False, swap=False, blank=False, extra=False):
    """``src`` (a mask table) rewritten in another CSV dialect."""
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    if swap:
        rows = [[r[1], r[0]] for r in rows]
    if extra:
        rows = [r + (["note"] if i == 0 else ["x"]) for i, r in enumerate(rows)]
    if blank:
        rows = rows[:3] + [[]] + rows[3:] + [[]]
    text = "\r\n" if crlf else "\n"
    body = text.join(",".join(r) for r in rows) + text
    dst.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body.encode())
    return dst


def test_mask_table_dialects_are_read_alike_by_train_and_test(demo_dir, tmp_path):
    """A byte-order mark (Excel), CRLF, blank lines, swapped columns and an extra column: the same table for
    train.py (read_mask_table) and test.py (read_ground_truth), one shared reader."""
    from airbus_ships.test import read_ground_truth
    images = demo_dir / "images"
    plain = read_mask_table(demo_dir / "masks.csv", images).frame[["ImageId", "rle"]]
    truth = read_ground_truth(demo_dir / "masks.csv", images)[0]
    dialect = write_dialect(demo_dir / "masks.csv", tmp_path / "excel.csv", bom=True, crlf=True, swap=True,
                            blank=True, extra=True)
    table = read_mask_table(dialect, images)
    assert table.problems == []
    pd.testing.assert_frame_equal(table.frame[["ImageId", "rle"]], plain)
    assert read_ground_truth(dialect, images) == (truth, [])


@pytest.mark.parametrize("content, message", [
    (None, "(a table without its header?)"),  # the demo table without its header: cut after 60 characters
    (b"", "the first line must be the header ImageId,EncodedPixels; found an empty file"),
    (b"ImageId;EncodedPixels\na.jpg;1 2\n", "found 'ImageId;EncodedPixels'"),
    ("ImageId,EncodedPixels\nbåd.jpg,1 2\n".encode("latin-1"), "not UTF-8 text"),
])
def test_an_unreadable_mask_table_is_one_short_line(demo_dir, tmp_path, content, message):
    """Both readers (train.py's read_mask_table, test.py's read_ground_truth) give one line naming the file."""
    from airbus_ships.test import read_ground_truth
    path = tmp_path / "masks.csv"
    if content is None:  # the demo table without its header: a long RLE first
        content = b"".join((demo_dir / "masks.csv").read_bytes().splitlines(keepends=True)[1:])
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        read_mask_table(path, demo_dir / "images")
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text and len(text) < 200 + len(str(path))
    with pytest.raises(SystemExit) as stop:  # test.py: the same line
        read_ground_truth(path, demo_dir / "images")
    assert stop.value.code == text


def test_an_empty_row_beside_ship_rows_is_named(demo_dir, tmp_path):
    """An image with an empty row (no ship) and a ship row is a ship image, and both readers say so by name."""
    from airbus_ships.test import read_ground_truth
    frame = pd.read_csv(demo_dir / "masks.csv", keep_default_na=False)
    ship_image = frame[frame.EncodedPixels != ""].ImageId.iloc[0]
    path = tmp_path / "masks.csv"
    path.write_text((demo_dir / "masks.csv").read_text() + f"{ship_image},\n")
    line = len(frame) + 2
    expected = f"{path}:{line}: {ship_image}: an empty row (no ship) besides ship rows; taken as a ship image"
    assert any(p.startswith(expected) for p in read_mask_csv(path)[1])
    table = read_mask_table(path, demo_dir / "images")
    assert any(p.startswith(expected) for p in table.problems)
    assert table.frame.set_index("ImageId").n_ships[ship_image] == (frame.ImageId == ship_image).sum()
    truth, problems = read_ground_truth(path, demo_dir / "images")
    assert any(p.startswith(expected) for p in problems) and len(truth[ship_image]) > 0


def test_training_check_names_every_broken_entry_of_the_corpus(tmp_path):
    """The corpus under an images/ folder, an empty mask row each: train.py's table check names every broken
    entry with its reason (read from the header and the file's end: nothing is decoded), and an image stored
    turned (EXIF: training reads pixels as stored); every other image is kept and the training pipeline decodes
    it as test.py does: the lossless variants exactly as the base image."""
    from airbus_ships.pipeline import load_example
    from common.io import read_rgb
    base, cases = corpus_768(tmp_path / "images")
    (tmp_path / "masks.csv").write_text("ImageId,EncodedPixels\n" + "".join(f"{c.name},\n" for c in cases))
    table = read_mask_table(tmp_path / "masks.csv", tmp_path / "images")
    named = {c.name: [p for p in table.problems if f"/{c.name}: " in p] for c in cases}
    words = {"one_pixel.png": "image is 1x1, not 768x768", "exif_rotated.png": "EXIF orientation 6",
             "huge.png": "image is 40000x40000, not 768x768"}
    for case in cases:
        if case.kind == BROKEN or case.name in words:
            assert len(named[case.name]) == 1, (case.name, table.problems)
            assert words.get(case.name, case.reason).lower() in named[case.name][0].lower(), named[case.name]
        else:
            assert not named[case.name], named[case.name]
    kept = set(table.frame.ImageId)
    assert kept == {c.name for c in cases if c.kind in (EXACT, READABLE)} - {"exif_rotated.png"}
    for row in table.frame.itertuples():
        image, _ = load_example(row.path, row.rle)
        image = image.numpy()
        if row.ImageId.endswith(".png") or row.ImageId == "png named.jpg":  # the lossless ones and gray.png
            assert np.array_equal(image, read_rgb(row.path)), row.ImageId
        if next(c.kind for c in cases if c.name == row.ImageId) == EXACT:
            assert np.array_equal(image, base), row.ImageId
        else:
            assert np.abs(image.astype(int) - read_rgb(row.path)).mean() < 3, row.ImageId


# ------------------------------------------------------------------------------------------------ model files
def bad_model_files(folder):
    """``{kind: (path, words its message must hold)}``: model files test.py and train.py --resume must refuse."""
    import keras
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    (folder / "empty.keras").write_bytes(b"")
    files["empty"] = (folder / "empty.keras", "file is empty (0 bytes)")
    (folder / "random.keras").write_bytes(np.random.default_rng(0).bytes(5000))
    files["random bytes"] = (folder / "random.keras", "not a .keras model")
    with zipfile.ZipFile(folder / "torch.keras", "w") as z:  # the layout of a PyTorch checkpoint
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("archive/version", "3\n")
    files["another program's zip"] = (folder / "torch.keras", "without a Keras model in it")
    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x[..., :1])(inputs)).save(folder / "lambda.keras")
    files["Lambda layer"] = (folder / "lambda.keras", "Lambda layer")
    vector = keras.Input((10,))
    keras.Model(vector, keras.layers.Dense(2)(vector)).save(folder / "dense.keras")
    files["another network"] = (folder / "dense.keras", "not a ship map network")
    (folder / "folder.keras").mkdir()
    files["a folder"] = (folder / "folder.keras", "is a folder")
    files["missing"] = (folder / "missing.keras", "model not found")
    return files


def test_unusable_model_files_are_named_in_one_line(tmp_path):
    from airbus_ships.inference import ModelFileError, open_model
    from airbus_ships.train import load_checkpoint
    for kind, (path, words) in bad_model_files(tmp_path).items():
        with pytest.raises(ModelFileError) as err:
            open_model(path)
        text = str(err.value)
        assert text.startswith(f"{path}: ") and words in text and "\n" not in text, (kind, text)
        with pytest.raises(SystemExit) as stop:  # train.py --resume / --calibrate-only
            load_checkpoint(path)
        assert stop.value.code == text


# ------------------------------------------------------------------------------------------------ train state
def test_a_kill_between_the_checkpoint_and_its_state_is_finished_on_resume(tmp_path, monkeypatch):
    """SaveLastAndState commits an epoch by writing train_state.json with the checksum of the new last.keras,
    still under its temporary name, then renames it. Killed between the two (here: the rename fails),
    --resume finishes the rename instead of continuing from a checkpoint one epoch behind its state; a
    last.keras that matches neither is refused; the log loses the rows of epochs not committed."""
    import keras

    from airbus_ships import callbacks
    model = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.Conv2D(1, 1)])
    model.compile("adam", "mse")
    model.stop_training = False
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    early, plateau = callbacks.ResumableEarlyStopping(), callbacks.ResumableReduceLROnPlateau()
    for cb in (early, plateau):
        cb.set_model(model)
        cb.on_train_begin()
    save = callbacks.SaveLastAndState(model_dir, early, plateau)
    save.set_model(model)
    save.on_epoch_end(0)
    first = (model_dir / "last.keras").read_bytes()
    model.layers[0].kernel.assign(model.layers[0].kernel + 1.0)  # "epoch 2" changes the weights

    real_replace = os.replace

    def killed(src, dst):  # the kill comes as last.keras is about to be replaced: nothing after this point runs
        if str(dst).endswith("last.keras"):
            raise KeyboardInterrupt
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save.on_epoch_end(1)
    monkeypatch.undo()
    assert (model_dir / "last.keras").read_bytes() == first  # the old checkpoint, the new state
    state = callbacks.saved_state(model_dir, tmp_path / "train_log.csv")
    assert state["epochs_done"] == 2 and not (model_dir / "last.keras.tmp.keras").exists()
    assert callbacks.file_sha256(model_dir / "last.keras") == state["checkpoint_sha256"]
    (model_dir / "last.keras").write_bytes(first)  # a checkpoint that is not the one the state names
    with pytest.raises(SystemExit, match="is not the checkpoint .* describes"):
        callbacks.saved_state(model_dir, tmp_path / "train_log.csv")
    log = tmp_path / "train_log.csv"
    log.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n")  # epoch 2's row logged before the kill
    logger = callbacks.ResumableCSVLogger(str(log), append=True, epochs_done=2)
    logger.on_train_begin()
    logger.csv_file.close()
    assert log.read_text() == "epoch,loss\n0,1.0\n1,0.9\n"


# ------------------------------------------------------------------------------------------------ CLIs (slow)
def run_cli(script, *args, timeout=300):
    from airbus_ships.tests.conftest import PKG, ROOT
    return subprocess.run([sys.executable, str(PKG / script), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_predict_cli_over_the_corpus_replaces_an_earlier_runs_outputs(demo_dir, trained_run, tmp_path):
    """test.py --no-gt on a folder of the corpus, into the folder of an earlier scored run: exit 0; each broken
    entry named in one line with its reason and given an empty row; every image predicted, the lossless variants
    exactly as the base image; the earlier run's scores.csv and overlays (of other images) removed."""
    import keras

    from airbus_ships import test as test_script
    from airbus_ships.inference import predict_probs
    from airbus_ships.losses import CUSTOM_OBJECTS
    model_path = trained_run / "model" / "best.keras"
    out = tmp_path / "out"
    test_script.main(["--data", str(demo_dir), "--model", str(model_path), "--out", str(out), "--limit", "3"])
    assert (out / "scores.csv").is_file() and len(list((out / "result-image").glob("*.jpg"))) == 3
    base = few_colours((64, 96))
    cases = write_corpus(tmp_path / "corpus", base)
    model = keras.saving.load_model(model_path, custom_objects=CUSTOM_OBJECTS, compile=False)
    threshold = float(np.median(predict_probs(model, base)))  # about half the pixels: ships with shapes
    proc = run_cli("test.py", "--data", tmp_path / "corpus", "--no-gt", "--model", model_path, "--out", out,
                   "--overlays", "-1", "--threshold", threshold, "--min-size", 1, "--min-confidence", 0)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    with open(out / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    by_image = {c.name: [r[1] for r in rows if r[0] == c.name] for c in cases}
    assert {r[0] for r in rows} == {c.name for c in cases}  # a row for every entry, good or bad
    for case in cases:
        lines = [line for line in proc.stderr.splitlines() if f"/{case.name}: " in line]
        if case.kind == BROKEN:
            assert len(lines) == 1 and case.reason in lines[0].lower(), (case.name, lines)
            assert by_image[case.name] == [""]
        else:
            assert not lines, lines
            assert by_image[case.name] and all(by_image[case.name]), case.name  # ships found (low threshold)
        if case.kind == EXACT:
            assert by_image[case.name] == by_image["plain.png"], case.name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["problems"]) == sum(c.kind == BROKEN for c in cases)
    assert not (out / "scores.csv").exists()  # the earlier run's scores do not describe this submission
    overlays = {p.name for p in (out / "result-image").glob("*.jpg")}
    assert overlays == {os.path.splitext(c.name)[0] + ".jpg" for c in cases if c.kind != BROKEN}
    assert not list(out.rglob("*.tmp*")) and not (out / "submission.partial.csv").exists()


@pytest.mark.slow
def test_predict_cli_killed_then_resumed_ends_with_the_uninterrupted_outputs(demo_dir, trained_run, tmp_path):
    """kill -9 of test.py in the middle of its images: the earlier run's submission in --out is intact, the
    finished images' rows are on disk, and --resume ends with the outputs of a run never stopped (submission,
    scores, overlays byte for byte) without predicting the finished images again."""
    from airbus_ships import test as test_script
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    table = pd.read_csv(demo_dir / "masks.csv", keep_default_na=False)
    copies = []
    for k in range(3):  # 36 images: a few seconds of predicting to kill it in
        for path in sorted((demo_dir / "images").iterdir()):
            shutil.copy(path, data / "images" / f"{k}{path.name}")
        copies.append(table.assign(ImageId=f"{k}" + table.ImageId))
    pd.concat(copies).to_csv(data / "masks.csv", index=False)
    args = ["--data", str(data), "--model", str(trained_run / "model" / "best.keras"), "--overlays", "20"]
    whole = test_script.main(args + ["--out", str(tmp_path / "whole")])
    out = tmp_path / "out"
    test_script.main(args + ["--out", str(out), "--limit", "4"])  # an earlier, complete run in --out
    earlier = (out / "submission.csv").read_bytes()
    partial = out / "submission.partial.csv"
    proc = subprocess.Popen([sys.executable, str(test_script.__file__), *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_text().count("\n") >= 4:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "test.py ended before it could be killed"
    assert (out / "submission.csv").read_bytes() == earlier  # nothing complete lost
    done, _ = test_script.read_partial(partial)
    assert 0 < len(done) < 36
    resumed = test_script.main(args + ["--out", str(out), "--resume"])
    assert resumed["images_predicted"] == 36 - len(done)
    for name in ("submission.csv", "scores.csv"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    overlays = sorted(p.name for p in (out / "result-image").glob("*.jpg"))
    assert overlays == sorted(p.name for p in (tmp_path / "whole" / "result-image").glob("*.jpg"))
    for name in overlays:
        assert (out / "result-image" / name).read_bytes() == (tmp_path / "whole" / "result-image" / name).read_bytes()
    for key in ("kaggle_score", "dice_pixels", "images_scored", "ship_no_ship_accuracy"):
        assert resumed[key] == whole[key], key
    assert not partial.exists()


@pytest.mark.slow
def test_predict_cli_refuses_unusable_models_in_one_line(demo_dir, tmp_path):
    """test.py with each unusable model file: exit status 1 and one line on stderr naming the file and the
    reason (the empty and non-zip files before TensorFlow is even loaded)."""
    files = bad_model_files(tmp_path / "models")  # (the others: test_unusable_model_files_are_named_in_one_line)
    for kind in ("empty", "Lambda layer"):
        path, words = files[kind]
        start = time.time()
        proc = run_cli("test.py", "--data", demo_dir, "--model", path, "--out", tmp_path / "out")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, (kind, proc.stderr[-2000:])
        assert lines[0].startswith(f"{path}: ") and words in lines[0], lines
        if kind == "empty":
            assert time.time() - start < 30  # no TensorFlow loaded to say so
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_killed_mid_epoch_resumes_to_the_uninterrupted_weights(trained_run, demo_dir, tmp_path):
    """kill -9 of train.py during its second epoch, then --resume: the run ends with the weights of the fixture's
    run (2 epochs + --resume for a third), which equal those of a run never stopped
    (test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one); the log has one row per epoch."""
    import keras

    from airbus_ships.losses import CUSTOM_OBJECTS
    from airbus_ships.runtime import weights_digest
    from airbus_ships.tests.conftest import PKG, ROOT, _run_script
    state_file = tmp_path / "model" / "train_state.json"
    proc = subprocess.Popen([sys.executable, str(PKG / "train.py"), "--data", str(demo_dir), "--out", str(tmp_path),
                             "--encoder", "scratch", "--widths", "4,8,16", "--batch-size", "2", "--steps-per-epoch",
                             "3", "--val-steps", "1", "--val-fraction", "0.25", "--calib-images", "5", "--epochs", "3"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state_file.exists() and '"epochs_done": 1' in state_file.read_text():
            break
        time.sleep(0.01)
    time.sleep(0.3)  # into the second epoch (0.4-4 s a step)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "train.py ended before it could be killed"
    assert json.loads(state_file.read_text())["epochs_done"] < 3
    _run_script("train.py", "--out", tmp_path, "--resume", "--epochs", "3")
    digests = [weights_digest(keras.saving.load_model(run / "model" / "last.keras", custom_objects=CUSTOM_OBJECTS,
                                                      compile=False)) for run in (trained_run, tmp_path)]
    assert digests[0] == digests[1]
    assert list(pd.read_csv(tmp_path / "train_log.csv")["epoch"]) == [0, 1, 2]
