import csv

import numpy as np
import pytest
import torch

from common.io import read_rgb
from fcnn_rgb_gt import train
from fcnn_rgb_gt.data import CropSampler, load_pair, spatial_split, to_tensor
from fcnn_rgb_gt.model import FCN


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


def test_spatial_split_keeps_a_gap_and_a_representative_strip():
    mask = np.zeros((100, 200), np.uint8)
    mask[:, :40] = 1  # buildings only on the left
    s = spatial_split(mask, 0.2, gap=8)
    tr, va = s.train(mask), s.val(mask)
    assert va.size > 0 and tr.size > 0 and tr.size + va.size < mask.size
    assert 0 < va.mean() < 1  # not the empty right strip, not the all-building left strip


def test_training_run_writes_checkpoint_plot_and_log(trained_run):
    for name in ("best.pt", "last.pt", "log.csv", "loss_vs_epochs.png", "config.json"):
        assert (trained_run / name).is_file(), name
    ckpt = torch.load(trained_run / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "best_iou", "config", "threshold"} <= set(ckpt)
    assert ckpt["epoch"] == 2
    rows = list(csv.DictReader(open(trained_run / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and "val_loss" in rows[0] and "train_loss" in rows[0]
    assert 0 <= torch.load(trained_run / "best.pt", weights_only=True)["threshold"] <= 1


def test_resume_continues_the_run(pair_dir, trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert train.main(["--data", str(pair_dir), "--out", str(run), "--epochs", "3", "--tile", "64",
                       "--batch-size", "4", "--normalize", "--batch-norm", "--resume"]) == 0
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and len(ckpt["history"]) == 3


@pytest.mark.parametrize("case", ["missing", "size_mismatch", "bad_gt_values", "tiny", "corrupt"])
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
    out = tmp_path / "run"
    code = train.main(["--data", str(data), "--out", str(out), "--epochs", "1", "--tile", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and str(bad) in err[0], err
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
