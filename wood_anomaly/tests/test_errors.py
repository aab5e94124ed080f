"""What a user gets wrong or what goes wrong mid-run: bad options stop train.py before any work, one photo's
failure or an interrupt keeps every row already computed, an empty shard still merges, wrong paths exit
non-zero, two photos with one stem keep their outputs apart, and predict draws with the training seed."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from common.io import list_images, read_rgb, save_image
from common.shard import main as shard_main
from wood_anomaly import config, evaluate, predict, train
from wood_anomaly.data import image_id
from wood_anomaly.tests.test_pipeline import rows_of

pytestmark = pytest.mark.slow  # every test here trains a model or predicts with one


@pytest.fixture(scope="module")
def three_photos(demo_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("three photos")
    for p in list_images(demo_dir / "images")[:3]:
        shutil.copy(p, folder / p.name)
    return folder


def run_predict(model, data, out, *extra):
    predict.main(["--data", str(data), "--model", str(model), "--out", str(out), *extra])
    return rows_of(out) if "--shard" not in extra else None


def test_predict_refuses_a_checkpoint_with_an_unusable_config(trained_run, tmp_path, three_photos):
    ckpt = torch.load(trained_run / "model.pt", weights_only=True)
    ckpt["config"]["pad"] = 30
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(SystemExit) as exc:
        run_predict(tmp_path / "bad.pt", three_photos, tmp_path / "pred")
    assert "--pad 30" in str(exc.value.code)


def test_one_photo_failing_keeps_the_others(trained_run, three_photos, tmp_path, monkeypatch):
    names = sorted(p.name for p in three_photos.iterdir())
    real = predict.anomaly_map

    def flaky(model, image, *args, **kwargs):
        if image_of(image_id(image)) == names[1]:
            raise RuntimeError("simulated out of memory")
        return real(model, image, *args, **kwargs)

    image_of = {image_id(read_rgb(three_photos / n)): n for n in names}.get
    monkeypatch.setattr(predict, "anomaly_map", flaky)
    rows = run_predict(trained_run / "model.pt", three_photos, tmp_path / "pred")
    assert list(rows) == names
    bad = rows[names[1]]
    assert bad["label"] == "error" and names[1] in bad["status"] and "simulated out of memory" in bad["status"]
    assert all(rows[n]["status"] == "ok" and float(rows[n]["score"]) > 0 for n in (names[0], names[2]))
    assert len(rows_of(tmp_path / "pred", "timings.csv")) == 2


def test_a_failed_photo_keeps_no_outputs_of_an_earlier_run(trained_run, three_photos, tmp_path, monkeypatch):
    """The table says error; a preds.png of an earlier run (or half of this one's files) must not stay beside
    it as if it were the photo's result."""
    rows = run_predict(trained_run / "model.pt", three_photos, tmp_path / "pred")
    folders = {n: tmp_path / "pred" / n.rsplit(".", 1)[0] for n in rows}
    assert all((f / "preds.png").exists() for f in folders.values())
    real, first = predict.save_image, sorted(rows)[0]

    def failing_heatmap(path, *args, **kwargs):  # preds.png written, then the disk fills up
        if path.name == "heatmap.jpg" and path.parent == predict.staging(folders[first]):
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(predict, "save_image", failing_heatmap)
    rows = run_predict(trained_run / "model.pt", three_photos, tmp_path / "pred")
    assert rows[first]["label"] == "error" and "No space left" in rows[first]["status"]
    assert not any((folders[first] / name).exists() for name in predict.OUTPUTS)
    assert all((folders[n] / name).exists() for n in rows if n != first for name in predict.OUTPUTS)


def test_no_photo_scored_exits_non_zero_with_the_table_written(trained_run, three_photos, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("simulated bad setting")

    monkeypatch.setattr(predict, "anomaly_map", broken)
    with pytest.raises(SystemExit) as exc:
        run_predict(trained_run / "model.pt", three_photos, tmp_path / "pred")
    assert "no photo could be scored" in str(exc.value.code)
    rows = rows_of(tmp_path / "pred")
    assert len(rows) == 3 and all("simulated bad setting" in r["status"] for r in rows.values())


def test_interrupt_keeps_the_rows_already_computed(trained_run, three_photos, tmp_path, monkeypatch):
    real, calls = predict.anomaly_map, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(predict, "anomaly_map", interrupted)
    with pytest.raises(SystemExit) as exc:  # one line on stderr and status 130, no traceback
        run_predict(trained_run / "model.pt", three_photos, tmp_path / "pred")
    assert exc.value.code == 130
    rows = list(rows_of(tmp_path / "pred").values())
    assert [r["status"] for r in rows[:1]] == ["ok"] and float(rows[0]["score"]) > 0
    assert [r["label"] for r in rows[1:]] == ["error", "error"]
    assert all(r["status"].startswith("not processed") and "KeyboardInterrupt" in r["status"] for r in rows[1:])
    assert (tmp_path / "pred" / rows[0]["image"].rsplit(".", 1)[0] / "preds.png").exists()


def test_empty_shard_has_the_full_header_and_merges(trained_run, demo_dir, tmp_path):
    one = tmp_path / "one photo"
    one.mkdir()
    shutil.copy(list_images(demo_dir / "images")[0], one)
    run_predict(trained_run / "model.pt", one, tmp_path / "single")
    for i in range(2):
        run_predict(trained_run / "model.pt", one, tmp_path / "sharded", "--shard", f"{i}/2")
    empty = (tmp_path / "sharded" / "predictions.shard-1-of-2.csv").read_text().splitlines()
    assert empty == [",".join(predict.FIELDS)]
    assert (tmp_path / "sharded" / "timings.shard-1-of-2.csv").read_text().splitlines() == [
        ",".join(predict.TIMING_FIELDS)]
    assert shard_main(["merge", str(tmp_path / "sharded" / "predictions.csv")]) == 0
    assert shard_main(["merge", str(tmp_path / "sharded" / "timings.csv")]) == 0
    single = (tmp_path / "single" / "predictions.csv").read_bytes()
    assert (tmp_path / "sharded" / "predictions.csv").read_bytes() == single


def test_wrong_paths_exit_non_zero(trained_run, three_photos, tmp_path, predicted, demo_dir, capsys):
    (tmp_path / "no photos").mkdir()
    (tmp_path / "no photos" / "notes.txt").write_text("not a photo")
    for data in (tmp_path / "missing", tmp_path / "no photos"):
        with pytest.raises(SystemExit) as exc:
            run_predict(trained_run / "model.pt", data, tmp_path / "pred")
        assert exc.value.code == 2 and str(data) in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a wrong path is a usage error (2), as the docstring says
        run_predict(tmp_path / "missing.pt", three_photos, tmp_path / "pred")
    assert exc.value.code == 2 and f"{tmp_path / 'missing.pt'}: no trained model" in capsys.readouterr().err
    for option in ("--masks", "--labels", "--pred", "--data"):  # --data typo: was 'nothing to score', exit 1
        with pytest.raises(SystemExit) as exc:
            evaluate.main(["--pred", str(predicted), "--data", str(demo_dir), option, str(tmp_path / "typo")])
        assert exc.value.code == 2 and f"{option} {tmp_path / 'typo'}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a data folder without masks or labels: nothing to score
        evaluate.main(["--pred", str(predicted), "--data", str(tmp_path / "no photos")])
    assert "nothing to score" in str(exc.value.code)


def test_photos_with_the_same_stem_keep_their_outputs_apart(trained_run, demo_dir, tmp_path):
    a, b = list_images(demo_dir / "images")[:2]
    folder = tmp_path / "same stem"
    folder.mkdir()
    shutil.copy(a, folder / "board.jpg")
    save_image(folder / "board.png", read_rgb(b))
    rows = run_predict(trained_run / "model.pt", folder, tmp_path / "pred")
    assert [r["status"] for r in rows.values()] == ["ok", "ok"]
    maps = {n: np.load(tmp_path / "pred" / n / "anomaly_map.npy") for n in ("board.jpg", "board.png")}
    assert not np.array_equal(*maps.values()) and not (tmp_path / "pred" / "board").exists()
    masks = tmp_path / "masks"
    save_image(masks / "board.png", np.zeros(maps["board.jpg"].shape, np.uint8))
    assert evaluate.evaluate(tmp_path / "pred", masks, None)["photos_with_masks"] == 2
    assert config.output_folders(["a.jpg", "a.png", "a.jpg.png", "b.jpg"]) == {
        "a.jpg": "a.jpg", "a.jpg.png": None, "a.png": "a.png", "b.jpg": "b"}


def test_predict_draws_with_the_training_seed(trained_run, demo_dir, tmp_path):
    """The self-reference and colour-reference cells come from the seed in the checkpoint: the same model gives
    the same bytes on every run, a model trained with another seed other maps."""
    one = tmp_path / "one photo"
    one.mkdir()
    shutil.copy(list_images(demo_dir / "images")[0], one)
    ckpt = torch.load(trained_run / "model.pt", weights_only=True)
    ckpt["config"]["seed"] = 5
    torch.save(ckpt, tmp_path / "seed5.pt")
    runs = {}
    for name, model in (("five", tmp_path / "seed5.pt"), ("five again", tmp_path / "seed5.pt"),
                        ("zero", trained_run / "model.pt")):
        run_predict(model, one, tmp_path / name)
        runs[name] = (tmp_path / name / "predictions.csv").read_bytes(), np.load(
            next((tmp_path / name).glob("*/anomaly_map.npy")))
    assert runs["five"][0] == runs["five again"][0] and np.array_equal(runs["five"][1], runs["five again"][1])
    assert not np.array_equal(runs["five"][1], runs["zero"][1])  # other self-reference and colour samples


def test_min_area_zero_labels_only_photos_with_a_masked_pixel(trained_run, demo_dir, tmp_path):
    """--min-area 0 means 'any pixel above the threshold', not 'every photo': an empty mask stays normal (the
    rule was frac >= min_area, and 0 >= 0 labelled every clean photo anomalous)."""
    ckpt = torch.load(trained_run / "model.pt", weights_only=True)
    ckpt["config"]["min_area"] = 0.0
    torch.save(ckpt, tmp_path / "min_area_0.pt")
    rows = run_predict(tmp_path / "min_area_0.pt", demo_dir / "images", tmp_path / "pred")
    assert {int(r["anomalous_area_px"]) > 0 for r in rows.values()} == {True, False}  # both kinds of photo
    for r in rows.values():
        assert r["label"] == ("anomalous" if int(r["anomalous_area_px"]) > 0 else "normal"), r


def test_unusable_checkpoint_is_one_line_naming_the_file(trained_run, three_photos, tmp_path):
    """A corrupt, truncated, foreign or incomplete model.pt stops predict with the file and the reason, not a
    traceback from torch.load or a KeyError (a foreign dict was called 'written by an older train.py')."""
    good = (trained_run / "model.pt").read_bytes()
    ckpt = torch.load(trained_run / "model.pt", weights_only=True)
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.pt").write_bytes(good[:200])
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    torch.save({k: v for k, v in ckpt.items() if k != "deep_q95"}, tmp_path / "incomplete.pt")
    torch.save({**ckpt, "bank": ckpt["bank"][:, :10]}, tmp_path / "narrow.pt")
    expected = {"text.pt": "not a PyTorch checkpoint", "truncated.pt": "not a readable checkpoint",
                "empty.pt": "not a readable checkpoint (the file is empty, 0 bytes)",
                "tensor.pt": "not a checkpoint of wood_anomaly", "foreign.pt": "not a checkpoint of wood_anomaly",
                "incomplete.pt": "deep_q95 missing", "narrow.pt": "unusable memory bank"}
    for name, reason in expected.items():
        with pytest.raises(SystemExit) as exc:
            run_predict(tmp_path / name, three_photos, tmp_path / "pred")
        message = str(exc.value.code)
        assert message.startswith(f"{tmp_path / name}: ") and reason in message and "\n" not in message, message


@pytest.mark.parametrize("option, value, reason", [("--threshold", "-1", "--threshold -1.0"),
                                                   ("--threshold", "nan", "--threshold nan"),
                                                   ("--threads", "-2", "--threads -2"),
                                                   ("--out", "a file", "is a file")])
def test_predict_rejects_unusable_options(trained_run, three_photos, tmp_path, capsys, option, value, reason):
    """A negative threshold marked every pixel (scores < 0), NaN none; a negative --threads was ignored; an --out
    that is a file ended in a FileExistsError traceback."""
    (tmp_path / "a file").write_text("")
    value = str(tmp_path / value) if option == "--out" else value
    with pytest.raises(SystemExit) as exc:
        predict.main(["--data", str(three_photos), "--model", str(trained_run / "model.pt"), "--out",
                      str(tmp_path / "pred"), option, value])
    assert exc.value.code == 2 and reason in capsys.readouterr().err
    assert not (tmp_path / "pred").exists()


def test_tables_on_disk_during_the_run_keep_the_rows_done(trained_run, three_photos, tmp_path, monkeypatch):
    """What a SIGKILL would leave: the tables on disk while the run is going. None before the first photo (no
    earlier run), then every photo done, the rest marked not processed; the end of the run replaces them."""
    real, on_disk = predict.anomaly_map, []

    def snapshot(*args, **kwargs):
        table = tmp_path / "pred" / "predictions.csv"
        on_disk.append(rows_of(tmp_path / "pred") if table.exists() else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(predict, "anomaly_map", snapshot)
    final = run_predict(trained_run / "model.pt", three_photos, tmp_path / "pred")
    assert on_disk[0] is None and [list(t) for t in on_disk[1:]] == [list(final)] * 2  # one row per photo, in order
    for done, table in enumerate(on_disk[1:], start=1):
        rows = list(table.values())
        assert [r["status"] for r in rows[:done]] == ["ok"] * done and all(r["score"] for r in rows[:done])
        assert all(r["label"] == "error" and r["status"] == f"not processed: {predict.STILL_TO_COME}"
                   for r in rows[done:])
    assert all(r["status"] == "ok" for r in final.values())
    assert len(rows_of(tmp_path / "pred", "timings.csv")) == 3


def test_unwritable_table_is_one_line(trained_run, three_photos, tmp_path):
    (tmp_path / "pred" / "predictions.csv").mkdir(parents=True)  # the table's name is taken by a folder
    with pytest.raises(SystemExit) as exc:
        run_predict(trained_run / "model.pt", three_photos, tmp_path / "pred")
    message = str(exc.value.code)
    assert message.startswith(f"--out {tmp_path / 'pred'}: cannot write the outputs") and "\n" not in message


def test_one_photo_without_self_reference_is_refused(demo_dir, tmp_path):
    """One training photo and --self-patches 0: calibration compared the photo with nothing (its own bank rows
    are left out), stored NaN spreads, and predict then called every photo 'normal' with score nan."""
    one = tmp_path / "one photo"
    one.mkdir()
    shutil.copy(list_images(demo_dir / "images")[0], one)
    with pytest.raises(SystemExit) as exc:
        train.main(["--data", str(one), "--out", str(tmp_path / "run"), "--scale", "1.0", "--tile", "128",
                    "--self-patches", "0"])
    assert "--self-patches 0" in str(exc.value.code) and not (tmp_path / "run" / "model.pt").exists()


def test_a_decompression_bomb_is_one_photo_error(trained_run, demo_dir, tmp_path):
    """A 100-byte PNG whose header claims 50000 x 50000 pixels: Pillow's DecompressionBombError is not an
    OSError, so it escaped common.io.read_rgb and stopped the whole batch with a traceback."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    folder = tmp_path / "bomb"
    folder.mkdir()
    shutil.copy(list_images(demo_dir / "images")[0], folder / "board.jpg")
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0))
    (folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                                      + chunk(b"IEND", b""))
    rows = run_predict(trained_run / "model.pt", folder, tmp_path / "pred")
    assert rows["board.jpg"]["status"] == "ok"
    huge = rows["huge.png"]
    assert huge["label"] == "error" and huge["status"].startswith(f"{folder / 'huge.png'}: image too large")
