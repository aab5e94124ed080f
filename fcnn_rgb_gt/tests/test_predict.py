import argparse
import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from common.tiling import MAX_TILE, pad_to_grid, tile_grid
from fcnn_rgb_gt import predict
from fcnn_rgb_gt.infer import building_logit, load_checkpoint, predict_probs
from fcnn_rgb_gt.model import FCN


@pytest.mark.parametrize("shape", [(1, 1), (255, 257), (300, 520)])
def test_tiled_prediction_returns_the_input_size_and_never_feeds_more_than_256(shape):
    net = FCN().eval()
    seen = []
    net.conv1.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))  # every scale's input
    image = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
    prob = predict_probs(net, image, torch.device("cpu"))
    assert prob.shape == shape and prob.dtype == np.float32
    assert np.isfinite(prob).all() and (0 <= prob).all() and (prob <= 1).all()
    assert seen and all(s[2] <= MAX_TILE and s[3] <= MAX_TILE and s[1] == 3 for s in seen)


@pytest.mark.slow
@pytest.mark.parametrize("overlap", [16, 32])
def test_blending_leaves_no_seam(trained_run, pair_dir, overlap):
    """Overlapping, blended tiles come close to one untiled forward pass over the same padded image, with a
    trained model whose output really changes at a tile border (the convolutions' zero padding): plain
    tiles differ there by more than 0.3 in probability, blended ones by less than a sixth of that (measured
    0.07 at overlap 16, 0.02 at 32; a flat blending window, i.e. plain averaging, gives ~0.5)."""
    net, _ = load_checkpoint(trained_run / "best.pt", torch.device("cpu"))
    image = np.asarray(Image.open(pair_dir / "rgb.png").convert("RGB"))[:150, :190]

    def reference(ov):  # one forward pass over the padded image the tiler uses, cropped back
        g = tile_grid(150, 190, 64, ov)
        padded = pad_to_grid(image, g)
        with torch.inference_mode():
            p = torch.sigmoid(building_logit(net(torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255)))[0]
        return p.numpy()[g.pad_top:g.pad_top + 150, g.pad_left:g.pad_left + 190]

    seams = np.abs(predict_probs(net, image, tile=64, overlap=0) - reference(0)).max()
    blended = np.abs(predict_probs(net, image, tile=64, overlap=overlap) - reference(overlap)).max()
    assert seams > 0.3, seams  # the weights have a real border effect to blend away
    assert blended < seams / 6, (blended, seams)


@pytest.mark.slow
def test_an_odd_overlap_leaves_no_seam(trained_run, pair_dir):
    """An odd overlap (predict.py --overlap 15, or train.py's validation at --tile 70: overlap 17) made the stride
    between tiles odd, so neighbouring tiles max-pooled different pixel pairs: blended tiles differed from one
    untiled pass about half as much as plain tiles (0.47 vs 0.96), not a sixth. Compared inside the image,
    away from the border, where the padding does not matter."""
    net, _ = load_checkpoint(trained_run / "best.pt", torch.device("cpu"))
    image = np.asarray(Image.open(pair_dir / "rgb.png").convert("RGB"))[:150, :190]
    with torch.inference_mode():
        logit = building_logit(net(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255))[0]
    reference = torch.sigmoid(logit).numpy()[16:-16, 16:-16]

    def diff(overlap):
        return np.abs(predict_probs(net, image, tile=64, overlap=overlap)[16:-16, 16:-16] - reference).max()

    seams = diff(0)
    assert seams > 0.3, seams
    for overlap in (15, 16, 17):
        assert diff(overlap) < seams / 6, (overlap, diff(overlap), seams)


def test_predict_cli_writes_outputs_and_prints_metrics(untrained_run, pair_dir, tmp_path, capsys):
    val = pair_dir / "extra" / "demo_val"
    out = tmp_path / "pred"
    rgba = np.asarray(Image.open(val / "rgb.png"))
    assert rgba.shape[2] == 4  # the exercise's RGBA convention
    code = predict.main(["--checkpoint", str(untrained_run / "best.pt"), "--image", str(val / "rgb.png"),
                         "--gt", str(val / "gt.png"), "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "building IoU" in text and "F1" in text and "pixel accuracy" in text
    for name in ("predictions.jpg", "predictions_mask.png", "predictions_overlay.jpg"):
        assert Image.open(out / name).size == (rgba.shape[1], rgba.shape[0])
    mask = np.asarray(Image.open(out / "predictions_mask.png"))
    assert set(np.unique(mask)) <= {0, 255}
    metrics = json.loads((out / "predictions_metrics.json").read_text())
    assert 0 <= metrics["iou"] <= 1 and 0 <= metrics["f1"] <= 1


def test_predict_any_size_image(untrained_run, tmp_path):
    img = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (255, 257, 4), dtype=np.uint8)).save(img)
    assert predict.main(["--checkpoint", str(untrained_run / "best.pt"), "--image", str(img),
                         "--out", str(tmp_path / "o")]) == 0
    assert Image.open(tmp_path / "o" / "predictions_mask.png").size == (257, 255)


def test_checkpoint_loads_with_config(untrained_run):
    model, ckpt = load_checkpoint(untrained_run / "best.pt", torch.device("cpu"))
    assert not model.training and ckpt["model_config"]["batch_norm"] is True


def test_a_checkpoint_without_scales_loads_as_one_scale_and_a_pyramid_one_as_saved(untrained_run, tmp_path):
    from fcnn_rgb_gt.model import FCN, ModelConfig

    old = torch.load(untrained_run / "best.pt", weights_only=True)
    old["model_config"].pop("scales", None)  # what versions before the pyramid saved
    torch.save(old, tmp_path / "old.pt")
    model, _ = load_checkpoint(tmp_path / "old.pt", torch.device("cpu"))
    assert model.cfg.scales == (1,)
    pyramid = FCN(ModelConfig(normalize=True, batch_norm=True, scales=(1, 2)))
    torch.save({**old, "model": pyramid.state_dict(), "model_config": pyramid.cfg.to_dict()}, tmp_path / "new.pt")
    model, _ = load_checkpoint(tmp_path / "new.pt", torch.device("cpu"))
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(building_logit(model(x)), building_logit(pyramid.eval()(x)), atol=1e-5, rtol=1e-4)
    assert model.cfg.scales == (1, 2)


@pytest.mark.parametrize("case", ["missing_image", "corrupt_image", "size_mismatch", "bad_gt_values",
                                  "missing_checkpoint", "text_checkpoint", "cut_checkpoint", "unsafe_checkpoint"])
def test_bad_predict_input_is_one_line_error(case, untrained_run, pair_dir, tmp_path, capsys):
    img, gt = tmp_path / "img.png", tmp_path / "gt.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(img)
    Image.fromarray(np.full((40, 50), 255, np.uint8)).save(gt)
    ckpt = untrained_run / "best.pt"
    bad = {"missing_image": img, "corrupt_image": img, "size_mismatch": gt, "bad_gt_values": gt}.get(
        case, tmp_path / "bad.pt")
    if case == "missing_image":
        img.unlink()
    elif case == "corrupt_image":
        img.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif case == "size_mismatch":
        Image.fromarray(np.full((41, 50), 255, np.uint8)).save(gt)
    elif case == "bad_gt_values":
        Image.fromarray(np.full((40, 50), 7, np.uint8)).save(gt)
    else:
        ckpt = bad
        if case == "text_checkpoint":
            bad.write_text("not a checkpoint\n")
        elif case == "cut_checkpoint":
            bad.write_bytes((untrained_run / "best.pt").read_bytes()[:5000])
        elif case == "unsafe_checkpoint":  # a pickled object outside torch's weights-only allowlist
            torch.save({"model": {}, "model_config": argparse.Namespace(a=1)}, bad)
    out = tmp_path / "out"
    code = predict.main(["--checkpoint", str(ckpt), "--image", str(img), "--gt", str(gt), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and str(bad) in err[0], err
    assert not out.exists()  # nothing written


@pytest.fixture(scope="module")
def pair_folders(pair_dir, tmp_path_factory):
    """Five small rgb.png/gt.png folders cut from the demo pair (different sizes), as in extra/*."""
    root = tmp_path_factory.mktemp("pairs")
    rgb, gt = Image.open(pair_dir / "rgb.png"), Image.open(pair_dir / "gt.png")
    for i in range(5):
        box = (7 * i, 5 * i, 7 * i + 60 + 9 * i, 5 * i + 50 + 4 * i)
        (root / f"pair_{i}").mkdir()
        rgb.crop(box).save(root / f"pair_{i}" / "rgb.png")
        gt.crop(box).save(root / f"pair_{i}" / "gt.png")
    return sorted(root.iterdir())


def test_two_shards_merge_into_what_one_worker_writes(untrained_run, pair_folders, tmp_path, capsys):
    from common import shard

    base = ["--checkpoint", str(untrained_run / "best.pt"), "--data", *map(str, reversed(pair_folders))]
    assert predict.main(base + ["--out", str(tmp_path / "one")]) == 0
    for i in range(2):
        assert predict.main(base + ["--out", str(tmp_path / "two"), "--shard", f"{i}/2"]) == 0
    shards = [tmp_path / "two" / f"predictions.shard-{i}-of-2.csv" for i in range(2)]
    assert [len(s.read_text().splitlines()) for s in shards] == [1 + 3, 1 + 2]  # header + round-robin rows
    assert shard.main(["merge", str(tmp_path / "two" / "predictions.csv")]) == 0
    one = (tmp_path / "one" / "predictions.csv").read_bytes()
    assert (tmp_path / "two" / "predictions.csv").read_bytes() == one
    rows = list(csv.DictReader(io.StringIO(one.decode())))
    assert [r["name"] for r in rows] == [f"pair_{i}" for i in range(5)]  # sorted by image path
    assert all(0 <= float(r["iou"]) <= 1 for r in rows)
    for i in range(5):  # every image's files, in its own folder, the same from either run
        for name in ("predictions.jpg", "predictions_mask.png", "predictions_overlay.jpg"):
            assert (tmp_path / "two" / f"pair_{i}" / name).is_file()
        assert (tmp_path / "two" / f"pair_{i}" / "predictions_mask.png").read_bytes() == \
            (tmp_path / "one" / f"pair_{i}" / "predictions_mask.png").read_bytes()


def test_several_images_and_a_folder_with_a_bad_file(untrained_run, pair_folders, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for d in pair_folders[:2]:
        Image.open(d / "rgb.png").save(folder / f"{d.name}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code = predict.main(["--checkpoint", str(untrained_run / "best.pt"), "--image", str(folder),
                         str(pair_folders[4] / "rgb.png"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "broken.png" in err[0]  # named, and the others still ran
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv", newline="")))
    assert [r["status"] for r in rows] == ["predicted", "failed", "predicted", "predicted"]  # every input has its row
    assert "broken.png" in rows[1]["error"] and "truncated" in rows[1]["error"]
    assert not (tmp_path / "out" / rows[1]["name"]).exists()
    rows = [r for r in rows if r["status"] == "predicted"]
    assert all(r["iou"] == "" for r in rows)  # no ground truth given
    for r in rows:
        assert Image.open(tmp_path / "out" / r["name"] / "predictions.jpg").size == (int(r["width"]), int(r["height"]))


def test_images_sharing_a_stem_keep_their_own_outputs(untrained_run, pair_folders, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.open(pair_folders[0] / "rgb.png").convert("RGB").save(folder / "a.png")
    Image.open(pair_folders[1] / "rgb.png").convert("RGB").save(folder / "a.jpg", quality=95)
    Image.open(pair_folders[2] / "rgb.png").convert("RGB").save(folder / "b.png")
    assert predict.main(["--checkpoint", str(untrained_run / "best.pt"), "--image", str(folder),
                         "--out", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv", newline="")))
    assert [r["name"] for r in rows] == ["a.jpg", "a.png", "b"]  # the stem alone where it is unique
    for r in rows:  # each image's own files, of its own size
        assert Image.open(tmp_path / "out" / r["name"] / "predictions_mask.png").size == \
            (int(r["width"]), int(r["height"]))


@pytest.mark.parametrize("args", [["--device", "gpu"], ["--batch-size", "0"], ["--batch-size", "2"],
                                  ["--overlap", "200"]])
def test_bad_predict_options_are_refused(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        predict.parse_args(args)  # --batch-size 2 at the default 256 px tile: over the memory limit
    assert exit_.value.code == 2 and args[0] in capsys.readouterr().err
    assert predict.parse_args(["--batch-size", "4", "--tile", "128"]).batch_size == 4


@pytest.mark.parametrize("args", [["--threshold", "nan"], ["--image", "a.png", "--data", "d"]])
def test_predict_options_that_would_be_silently_ignored_are_refused(args, capsys):
    # NaN was the checkpoint's threshold without a word; --image beside --data was not predicted at all
    with pytest.raises(SystemExit) as exit_:
        predict.parse_args(args)
    assert exit_.value.code == 2 and args[0] in capsys.readouterr().err


def test_a_small_tile_alone_is_accepted_and_out_as_a_file_is_refused(tmp_path, capsys):
    # --tile 32 was refused for the default --overlap 32 the user never gave
    assert predict.parse_args(["--tile", "32"]).overlap == 16
    assert predict.parse_args([]).overlap == 32 and predict.parse_args(["--tile", "64"]).overlap == 32
    (tmp_path / "f").write_text("a file")
    with pytest.raises(SystemExit) as exit_:  # was a FileExistsError traceback after the prediction
        predict.parse_args(["--out", str(tmp_path / "f")])
    assert exit_.value.code == 2 and f"--out {tmp_path / 'f'}: is a file" in capsys.readouterr().err


def test_no_stale_metrics_beside_a_new_prediction(untrained_run, pair_dir, tmp_path):
    """A prediction without --gt into a folder that holds an earlier one with --gt: the earlier image's
    predictions_metrics.json stayed beside the new image's files, as if it were theirs."""
    val, out = pair_dir / "extra" / "demo_val", tmp_path / "out"
    ckpt = str(untrained_run / "best.pt")
    assert predict.main(["--checkpoint", ckpt, "--image", str(val / "rgb.png"), "--gt", str(val / "gt.png"),
                         "--out", str(out)]) == 0
    assert (out / "predictions_metrics.json").is_file()
    assert predict.main(["--checkpoint", ckpt, "--image", str(pair_dir / "rgb.png"), "--out", str(out)]) == 0
    assert (out / "predictions_mask.png").is_file() and not (out / "predictions_metrics.json").exists()


def test_a_checkpoint_without_training_config_is_one_line(untrained_run, pair_dir, tmp_path, capsys):
    # bare weights + model config (no 'config'): a KeyError traceback even with --image; now --image works and
    # the default input (the training image, which it does not name) is one line naming the file
    ckpt = torch.load(untrained_run / "best.pt", weights_only=True)
    bare = tmp_path / "bare.pt"
    torch.save({"model": ckpt["model"], "model_config": ckpt["model_config"]}, bare)
    assert predict.main(["--checkpoint", str(bare), "--image", str(pair_dir / "rgb.png"),
                         "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(bare), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bare}: names no training image"), err


def test_a_stopped_batch_keeps_the_earlier_rows_of_the_images_not_reached(untrained_run, pair_folders, tmp_path,
                                                                          monkeypatch, capsys):
    """A batch stopped after its first image (Ctrl-C here; kill -9 in test_kill.py): the table describes what the
    folders hold (the new row of the image done, the earlier run's rows of the others, whose files are still
    that run's); no traceback, status 130; running it again ends with the uninterrupted run's table."""
    base = ["--checkpoint", str(untrained_run / "best.pt"), "--data", *map(str, pair_folders[:3])]
    out = tmp_path / "out"
    assert predict.main(base + ["--out", str(out), "--threshold", "1.0"]) == 0  # the earlier run: no building
    real, calls = predict.predict_one, []

    def stopped_after_one(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(predict, "predict_one", stopped_after_one)
    assert predict.main(base + ["--out", str(out), "--threshold", "0"]) == 130  # this run: all building
    assert "interrupted" in capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "predictions.csv", newline="")))
    assert [(r["name"], r["status"], r["threshold"]) for r in rows] == [
        ("pair_0", "predicted", "0.0"), ("pair_1", "earlier run, not reached", "1.0"),
        ("pair_2", "earlier run, not reached", "1.0")]
    masks = [np.asarray(Image.open(out / f"pair_{i}" / "predictions_mask.png")) for i in range(3)]
    assert (masks[0] == 0).all() and (masks[1] == 255).all() and (masks[2] == 255).all()
    monkeypatch.setattr(predict, "predict_one", real)
    assert predict.main(base + ["--out", str(out), "--threshold", "0"]) == 0
    assert predict.main(base + ["--out", str(tmp_path / "whole"), "--threshold", "0"]) == 0
    assert (out / "predictions.csv").read_bytes() == (tmp_path / "whole" / "predictions.csv").read_bytes()


def test_input_warnings_name_a_gray_or_recoloured_image_and_an_inflated_building_share(pair_dir):
    from fcnn_rgb_gt.data import read_gt
    from fcnn_rgb_gt.infer import image_stats, input_warnings

    image = np.asarray(Image.open(pair_dir / "rgb.png").convert("RGB"))
    stats = image_stats(image, read_gt(pair_dir / "gt.png"))
    prior = stats["building_share"]
    assert input_warnings(image, prior, stats) == []  # the training image itself
    gray = np.repeat(image.mean(2, keepdims=True).astype(np.uint8), 3, 2)
    assert any("no colour" in w for w in input_warnings(gray, prior, stats))
    assert input_warnings(gray, prior, None) and not input_warnings(image, prior, None)  # older checkpoints
    dark = (image * 0.5).astype(np.uint8)
    assert any("colours differ" in w for w in input_warnings(dark, prior, stats))
    assert [w for w in input_warnings(image, 0.9, stats) if "marked 90.0% building" in w]


def test_predict_warns_on_stderr_and_in_the_csv_and_still_predicts(untrained_run, pair_dir, tmp_path, capsys):
    from fcnn_rgb_gt.data import read_gt
    from fcnn_rgb_gt.infer import image_stats

    image = np.asarray(Image.open(pair_dir / "rgb.png").convert("RGB"))
    ckpt = torch.load(untrained_run / "best.pt", weights_only=True)
    ckpt["input_stats"] = image_stats(image, read_gt(pair_dir / "gt.png"))
    torch.save(ckpt, tmp_path / "best.pt")
    Image.fromarray(np.repeat(image.mean(2, keepdims=True).astype(np.uint8), 3, 2)).save(tmp_path / "gray.png")
    out = tmp_path / "out"
    assert predict.main(["--checkpoint", str(tmp_path / "best.pt"), "--image", str(tmp_path / "gray.png"),
                         str(pair_dir / "rgb.png"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'gray.png'}: the image has (almost) no colour" in err
    rows = {r["name"]: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert "no colour" in rows["gray"]["warnings"] and "no colour" not in rows["rgb"]["warnings"]
    assert (out / "gray" / "predictions.jpg").is_file()
