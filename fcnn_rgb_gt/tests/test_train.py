import csv
import json

import numpy as np
import pytest
import torch

from common.io import read_rgb
from fcnn_rgb_gt import train
from fcnn_rgb_gt.data import CropSampler, load_pair, spatial_split, to_tensor
from fcnn_rgb_gt.model import FCN


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(pair_dir):
    torch.manual_seed(0)
    image, mask = load_pair(pair_dir / "rgb.png", pair_dir / "gt.png")
    sampler = CropSampler(to_tensor(image), torch.from_numpy(mask).long(), 64, augment=False,
                          generator=torch.Generator().manual_seed(0))
    x, y = sampler.sample(8)
    net = FCN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_sampler_crops_and_augments_in_step(pair_dir):
    image, mask = load_pair(pair_dir / "rgb.png", pair_dir / "gt.png")
    sampler = CropSampler(to_tensor(image), torch.from_numpy(mask).long(), 300, augment=True)
    x, y = sampler.sample(3)
    assert x.shape == (3, 3, 160, 160) and y.shape == (3, 160, 160)  # never larger than the region
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert set(np.unique(y.numpy())) <= {0, 1}


def test_a_palette_gt_is_read_by_its_colours(pair_dir, tmp_path):
    """A black-and-white gt.png saved as a 2-colour palette PNG (indices 0 = white, 1 = black) was refused with
    'unexpected mask values 1' (the indices were read as values)."""
    from PIL import Image

    gray = Image.open(pair_dir / "gt.png").convert("L")
    gray.convert("P", palette=Image.Palette.ADAPTIVE, colors=2).save(tmp_path / "gt.png")
    assert Image.open(tmp_path / "gt.png").mode == "P"
    assert set(np.unique(np.asarray(Image.open(tmp_path / "gt.png")))) == {0, 1}  # indices, not 0 / 255
    _, mask = load_pair(pair_dir / "rgb.png", pair_dir / "gt.png")
    _, from_palette = load_pair(pair_dir / "rgb.png", tmp_path / "gt.png")
    assert np.array_equal(from_palette, mask) and 0 < mask.mean() < 1


def test_spatial_split_keeps_a_gap_and_a_representative_strip():
    mask = np.zeros((100, 200), np.uint8)
    mask[:, :40] = 1  # buildings only on the left
    s = spatial_split(mask, 0.2, gap=8)
    tr, va = s.train(mask), s.val(mask)
    assert va.size > 0 and tr.size > 0 and tr.size + va.size < mask.size
    assert 0 < va.mean() < 1  # not the empty right strip, not the all-building left strip


@pytest.mark.slow
def test_best_pt_holds_the_averaged_weights_and_the_threshold(trained_run, pair_dir):
    from fcnn_rgb_gt.config import THRESHOLD
    from fcnn_rgb_gt.infer import averaged_weights

    best = torch.load(trained_run / "best.pt", weights_only=True)
    last = torch.load(trained_run / "last.pt", weights_only=True)
    assert best["threshold"] == THRESHOLD and set(best["input_stats"]) == {"mean", "std", "chroma", "building_share"}
    assert best["model_config"]["scales"] == (1, 2)  # the default's pyramid, what predict.py rebuilds
    ema = averaged_weights(last["averages"]["ema"])
    assert best["model"].keys() == ema.keys() and all(torch.equal(best["model"][k], ema[k]) for k in ema)
    assert not all(torch.equal(best["model"][k], last["model"][k]) for k in ema)  # not the last step's weights


def test_clean_up_drops_specks_and_fills_holes_but_keeps_a_building():
    from fcnn_rgb_gt.infer import clean_mask

    mask = np.zeros((60, 60), bool)
    mask[10:40, 10:40] = True  # a 30 px building
    mask[20:23, 20:23] = False  # a hole in it
    mask[50:53, 50:53] = True  # a speck
    out = clean_mask(mask, 3)
    assert out[10:40, 10:40].all() and out.sum() == 900  # the hole is filled, the speck gone, the building kept
    assert np.array_equal(clean_mask(mask, 0), mask)


def test_clean_up_is_scipys_opening_then_closing():
    from scipy import ndimage

    from fcnn_rgb_gt.infer import clean_mask

    def scipy_clean(mask, radius):  # min / max filters (reflected border) of a (2 radius + 1) px square
        k, m = 2 * radius + 1, mask.astype(np.uint8)
        m = ndimage.maximum_filter(ndimage.minimum_filter(m, k), k)
        return ndimage.minimum_filter(ndimage.maximum_filter(m, k), k).astype(bool)

    rng = np.random.default_rng(0)
    for share in (0.1, 0.5, 0.9):
        blobs = ndimage.uniform_filter((rng.random((97, 130)) < share).astype(float), 3) > 0.5
        for radius in (1, 2, 6, 7):
            assert np.array_equal(clean_mask(blobs, radius), scipy_clean(blobs, radius)), (share, radius)
    for shape in ((1, 1), (1, 40), (13, 13)):  # smaller than the window
        mask = rng.random(shape) < 0.5
        assert np.array_equal(clean_mask(mask, 6), scipy_clean(mask, 6)), shape


def test_the_share_limit_raises_the_threshold_only_where_it_would_mark_too_much():
    from fcnn_rgb_gt.infer import decide

    prob = np.linspace(0, 1, 10_000, dtype=np.float32).reshape(100, 100)  # 0.6 marks 40 % of the pixels
    mask, used = decide(prob, 0.6, 0, prior=0.1, max_share=1.5)
    assert mask.mean() == 0.15 and used > 0.6  # at most 1.5 x the training share of 10 %
    mask, used = decide(prob, 0.6, 0, prior=0.3, max_share=1.5)  # 40 % is within 45 %: unchanged
    assert used == 0.6 and np.array_equal(mask, prob >= 0.6)
    assert decide(prob, 0.6, 0, prior=0.1, max_share=0)[1] == decide(prob, 0.6, 0)[1] == 0.6  # no limit


@pytest.mark.slow
def test_training_run_writes_checkpoint_plot_and_log(trained_run):
    for name in ("best.pt", "last.pt", "log.csv", "loss_vs_epochs.png", "config.json"):
        assert (trained_run / name).is_file(), name
    ckpt = torch.load(trained_run / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "averages", "config", "threshold"} <= set(ckpt)
    assert ckpt["epoch"] == 2
    rows = list(csv.DictReader(open(trained_run / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and "val_loss" in rows[0] and "train_loss" in rows[0]
    assert 0 <= torch.load(trained_run / "best.pt", weights_only=True)["threshold"] <= 1


def _log_without_times(run) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(run / "log.csv"))]


@pytest.mark.slow
def test_an_interrupted_and_resumed_run_equals_an_uninterrupted_one(pair_dir, tmp_path, monkeypatch):
    """Stopped during epoch 2 (after epoch 1's last.pt) and resumed: the same weights, bit for bit, and the same
    log as a run that was never stopped (the crop stream continues where it was)."""
    args = ["--data", str(pair_dir), "--epochs", "2", "--tile", "64", "--batch-size", "4"]
    assert train.main(args + ["--out", str(tmp_path / "whole")]) == 0

    real_epoch = train.train_one_epoch

    def stopped_in_epoch_2(*a, **k):
        if train.train_one_epoch.calls == 1:
            raise KeyboardInterrupt  # as if killed during the second epoch
        train.train_one_epoch.calls += 1
        return real_epoch(*a, **k)

    stopped_in_epoch_2.calls = 0
    monkeypatch.setattr(train, "train_one_epoch", stopped_in_epoch_2)
    assert train.main(args + ["--out", str(tmp_path / "cut")]) == 130  # one line, no traceback
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 1
    assert train.main(args + ["--out", str(tmp_path / "cut"), "--resume"]) == 0

    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert cut["epoch"] == whole["epoch"] == 2
    assert whole["model"].keys() == cut["model"].keys()
    for k in whole["model"]:
        assert torch.equal(whole["model"][k], cut["model"][k]), k
    for k, v in whole["averages"]["ema"].items():  # the weight average continues too
        assert torch.equal(v, cut["averages"]["ema"][k]), k
    assert _log_without_times(tmp_path / "cut") == _log_without_times(tmp_path / "whole")


@pytest.mark.slow
def test_resume_keeps_the_runs_options_and_the_saved_config_is_resolved(pair_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(pair_dir.parent)  # a relative --data, stored absolute
    run = tmp_path / "run"
    base = ["--data", pair_dir.name, "--out", str(run), "--tile", "64", "--batch-size", "4"]
    assert train.main(base + ["--epochs", "1"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"] == str(pair_dir) and cfg["out"] == str(run)
    assert cfg["device"] == "cpu" and cfg["threads"] == torch.get_num_threads() >= 1
    capsys.readouterr()

    # another lr and tile on --resume: the run keeps its own (said on stderr) and config.json says what is used
    assert train.main(["--out", str(run), "--epochs", "2", "--resume", "--lr", "1e-5", "--tile", "32"]) == 0
    err = capsys.readouterr().err
    assert "keeps its own options" in err and "--lr 0.01 (not 1e-05)" in err and "--tile 64 (not 32)" in err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lr"] == 0.01 and cfg["tile"] == 64 and cfg["epochs"] == 2 and cfg["data"] == str(pair_dir)
    lrs = [float(r["lr"]) for r in csv.DictReader(open(run / "log.csv"))]
    assert lrs == [pytest.approx(1e-4)] * 2  # the schedule ends at 1 % of the run's own peak 0.01 (1e-05: 1e-07)

    # training into it again without --resume replaces the run: a warning says so
    assert train.main(base + ["--epochs", "1"]) == 0
    assert "warning:" in capsys.readouterr().err

    # a cut-off last.pt: one line naming the file, no traceback
    last = run / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    assert train.main(["--out", str(run), "--epochs", "3", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {last}: "), err


@pytest.mark.slow
def test_a_bare_resume_names_no_option(trained_run, tmp_path, capsys):
    # the run has --tile 64: a bare --resume said 'keeps its own options: --tile 64 (not 128)', naming a
    # value the user never gave
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert train.main(["--out", str(run), "--epochs", "3", "--resume"]) == 0
    assert "keeps its own options" not in capsys.readouterr().err
    assert torch.load(run / "last.pt", weights_only=True)["config"]["tile"] == 64


@pytest.mark.slow
def test_resume_refuses_other_images(pair_dir, trained_run, tmp_path, capsys):
    import shutil

    from PIL import Image

    run, other = tmp_path / "run", tmp_path / "other"
    shutil.copytree(trained_run, run)
    other.mkdir()
    Image.open(pair_dir / "rgb.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other / "rgb.png")
    Image.open(pair_dir / "gt.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other / "gt.png")
    assert train.main(["--data", str(other), "--out", str(run), "--epochs", "3", "--tile", "64", "--batch-size", "4",
                       "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(other / "rgb.png") in err[0] and "not the training pair" in err[0], err


def test_default_step_fits_the_memory_limit_and_larger_ones_are_refused(capsys):
    cfg = train.parse_args([])
    assert cfg.batch_size * cfg.tile ** 2 <= 256 ** 2
    for args in (["--tile", "256", "--batch-size", "8"], ["--batch-size", "5"]):
        with pytest.raises(SystemExit) as exit_:
            train.parse_args(args)
        assert exit_.value.code == 2 and "memory limit" in capsys.readouterr().err
    assert train.parse_args(["--batch-size", "16", "--tile", "64"]).batch_size == 16


@pytest.mark.parametrize("args", [["--device", "gpu"], ["--batch-size", "0"], ["--val-fraction", "1.5"],
                                  ["--seed", "-1"], ["--seed", str(2 ** 32)], ["--lr", "inf"],
                                  ["--weight-decay", "nan"], ["--scales", "0,1"], ["--scales", "1,x"]])
def test_bad_options_are_refused_before_anything_runs(args, capsys):
    # a --seed outside numpy's range was 'error: Seed must be between 0 and 2**32 - 1' (no option named) after
    # the data were read; --lr inf trained NaN weights and reported success
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(args)
    assert exit_.value.code == 2 and args[0] in capsys.readouterr().err


def test_an_out_that_is_a_file_is_refused_before_anything_runs(tmp_path, capsys):
    # was a FileExistsError traceback after the data had been read and the model built
    (tmp_path / "run").write_text("a file")
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--out", str(tmp_path / "run")])
    assert exit_.value.code == 2 and f"--out {tmp_path / 'run'}: is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_of_a_run_that_has_done_its_epochs_is_refused(trained_run, tmp_path, capsys):
    # it trained nothing, rewrote config.json with the smaller --epochs and reported success (exit 0)
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for epochs in ("2", "1"):  # the run did 2
        assert train.main(["--out", str(run), "--epochs", epochs, "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {run / 'last.pt'}: the run has done 2 epochs"), err
        assert "--epochs above 2" in err[0]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing rewritten


@pytest.mark.parametrize("case", ["missing", "size_mismatch", "bad_gt_values", "tiny", "corrupt", "no_buildings",
                                  "only_buildings"])
def test_bad_training_input_is_one_line_error(case, pair_dir, tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    rgb = read_rgb(pair_dir / "rgb.png")
    gt = np.asarray(Image.open(pair_dir / "gt.png"))
    Image.fromarray(rgb).save(data / "rgb.png")
    Image.fromarray(gt).save(data / "gt.png")
    bad = data / "gt.png"
    if case == "missing":
        bad.unlink()
    elif case == "size_mismatch":
        Image.fromarray(gt[:-3]).save(bad)
    elif case == "bad_gt_values":
        g = gt.copy()
        g[0, 0] = 128
        Image.fromarray(g).save(bad)
    elif case == "tiny":
        bad = data / "rgb.png"
        Image.fromarray(rgb[:1, :1]).save(bad)
    elif case == "corrupt":
        bad = data / "rgb.png"
        bad.write_bytes(bad.read_bytes()[:200])
    elif case in ("no_buildings", "only_buildings"):  # trained 'successfully' to a validation IoU of 1.0
        Image.fromarray(np.full_like(gt, 255 if case == "no_buildings" else 0)).save(bad)
    out = tmp_path / "run"
    code = train.main(["--data", str(data), "--out", str(out), "--epochs", "1", "--tile", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and str(bad) in err[0], err
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_no_training_pair_says_where_it_belongs_and_writes_nothing(tmp_path, capsys):
    """train.py without data wrote a synthetic demo pair into data/fcnn and trained on it without a word of
    consent; now it names the missing file, where the pair belongs and how to make the demo pair."""
    empty, out = tmp_path / "data", tmp_path / "run"
    empty.mkdir()
    assert train.main(["--data", str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {empty / 'rgb.png'}: no such file"), err
    assert "make demo-data-fcnn" in err[0] and "rgb.png and gt.png" in err[0]
    assert not any(empty.iterdir()) and (not out.exists() or not any(out.iterdir()))


def test_a_stored_config_of_an_older_version_resumes_at_the_built_in_values(tmp_path):
    from fcnn_rgb_gt.checkpoint import stored_options

    old = {"lr": 0.01, "loss": "wce", "dropout": 0.0, "upsample": "nearest", "threshold": 0.5,
           "exceed_memory_limit": False, "normalize": True, "batch_norm": True}
    assert stored_options(tmp_path / "last.pt", old) == {"lr": 0.01, "plain": False, "scales": "1"}
    assert stored_options(tmp_path / "last.pt", {**old, "scales": "1,2"})["scales"] == "1,2"
    assert stored_options(tmp_path / "last.pt", {**old, "normalize": False, "batch_norm": False})["plain"] is True
    for change in ({"loss": "ce_dice"}, {"threshold": -1.0}, {"exceed_memory_limit": True}, {"batch_norm": False}):
        with pytest.raises(ValueError, match="start a new run"):
            stored_options(tmp_path / "last.pt", {**old, **change})
