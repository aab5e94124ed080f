"""The shared rules of the demo-data generators, and each generator's on-disk format (through its CLI)."""
import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import demo, io

GENERATORS = ["wood_anomaly", "minerals", "airbus_ships", "fcnn_rgb_gt"]


def _generate(module: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"{module}.demo_data", "--out", str(out), *extra],
                          capture_output=True, text=True, check=True)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    for module in GENERATORS:
        _generate(module, root / module)
    return root


@pytest.mark.parametrize("module", GENERATORS)
def test_deterministic_and_marked(generated, tmp_path, module):
    _generate(module, tmp_path / "again")
    assert _digest(generated / module) == _digest(tmp_path / "again")
    assert demo.is_demo(generated / module)


@pytest.mark.parametrize("module", GENERATORS)
def test_never_overwrites_user_data(tmp_path, module):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "precious.txt").write_text("real data")
    result = _generate(module, user, "--force")  # --force rewrites demo data only
    assert "leaving it alone" in result.stderr
    assert [p.name for p in user.iterdir()] == ["precious.txt"]


def test_fcnn_pair_format(generated):
    folder = generated / "fcnn_rgb_gt"
    for pair in [folder, folder / "extra" / "demo_val"]:
        rgba = np.asarray(Image.open(pair / "rgb.png"))
        assert rgba.ndim == 3 and rgba.shape[2] == 4 and (rgba[..., 3] == 255).all()
        gt = io.read_mask(pair / "gt.png", {0: 1, 255: 0})  # raises on any other value
        assert gt.shape == rgba.shape[:2] and 0.02 < gt.mean() < 0.5


def test_wood_format(generated):
    folder = generated / "wood_anomaly"
    images = io.list_images(folder / "images")
    assert len(images) >= 4 and all(" " in p.name for p in images)
    labels = {r["stem"]: r["label"] for r in csv.DictReader(open(folder / "image_labels.csv"))}
    for p in images:
        mask = io.read_mask(folder / "masks" / "consensus" / f"{p.stem}.png", {0: 0, 255: 1})
        assert mask.shape == io.read_rgb(p).shape[:2]
        assert (labels[p.stem] == "anomalous") == bool(mask.any())
    assert set(labels.values()) == {"anomalous", "normal"}


def test_minerals_format(generated):
    folder = generated / "minerals"
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert classes == ["biotite", "bornite", "chrysocolla", "malachite", "muscovite", "pyrite", "quartz"]
    rows = list(csv.DictReader(open(folder / "manifest.csv")))
    assert {r["label"] for r in rows} == set(classes)
    for r in rows:
        assert io.read_rgb(folder / r["path"]).shape[2] == 3


def test_airbus_format(generated):
    folder = generated / "airbus_ships"
    rows = list(csv.DictReader(open(folder / "masks.csv")))
    ids = {p.name for p in io.list_images(folder / "images")}
    assert {r["ImageId"] for r in rows} == ids
    empty = {r["ImageId"] for r in rows if not r["EncodedPixels"]}
    assert 0 < len(empty) < len(ids)
    for image_id in ids - empty:
        ships = [io.rle_decode(r["EncodedPixels"]) for r in rows if r["ImageId"] == image_id]
        union = np.sum(ships, axis=0)
        assert union.max() == 1  # ships of one image never overlap
    assert io.read_rgb(folder / "images" / sorted(ids)[0]).shape == (768, 768, 3)


def test_claim_output_and_smooth_noise(tmp_path, capsys):
    assert demo.claim_output(tmp_path / "new")  # missing folder: created, may write
    (tmp_path / "new" / "x").write_text("x")
    assert not demo.claim_output(tmp_path / "new", force=True)  # user data, even with force
    demo.write_marker(tmp_path / "new", "test")
    assert demo.claim_output(tmp_path / "new", force=True)  # demo data may be rewritten with force
    noise = demo.smooth_noise((50, 70), np.random.default_rng(0), scale=20)
    assert noise.shape == (50, 70) and noise.min() == 0 and noise.max() == pytest.approx(1)


def test_common_imports_no_framework():
    code = ("import sys, common, common.io, common.tiling, common.metrics, common.demo, common.shard; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow', 'keras', 'jax')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
