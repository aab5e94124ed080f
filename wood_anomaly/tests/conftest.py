"""Session fixtures: small synthetic wood photos with planted defects (never the real data), one short
training run on them and one prediction run (with a corrupt file and a constant photo added)."""
from __future__ import annotations

import numpy as np
import pytest

from common.io import save_image
from wood_anomaly import demo_data, predict, train

# a tiny, fast configuration: demo photos of 192x256 at full scale, 128-px tiles: 2 x 3 tiles per photo, so that
# the stitching of tile features is exercised on real texture (and defects across tile borders)
TINY = ["--scale", "1.0", "--tile", "128", "--patches-per-image", "600", "--self-patches", "300", "--k", "5",
        "--threads", "2"]


def assert_same_maps(got: np.ndarray, want: np.ndarray, name: str = "") -> None:
    """Two float16 anomaly maps of one photo computed by two runs: equal up to the last bit of float16 (the CPU
    kernels' float32 results are not always bitwise the same from call to call: a score near a float16 rounding
    edge then lands one step away; seen at 279 of 49,152 pixels, relative 1e-3)."""
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=1e-4, err_msg=name)


def assert_same_outputs(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    """The files of two prediction runs (``{relative path: bytes}``): the same names; tables and masks byte for
    byte; anomaly maps by :func:`assert_same_maps`; heat-map and overlay JPEGs (drawn from those maps) decoded,
    within a few levels on all but 0.1 % of the pixels."""
    import io

    from PIL import Image

    assert sorted(got) == sorted(want)
    for name, data in got.items():
        if data == want[name]:
            continue
        if name.endswith(".npy"):
            assert_same_maps(np.load(io.BytesIO(data)), np.load(io.BytesIO(want[name])), name)
        elif name.endswith(".jpg"):
            a, b = (np.asarray(Image.open(io.BytesIO(x)).convert("RGB"), np.int16) for x in (data, want[name]))
            assert a.shape == b.shape and np.mean(np.abs(a - b) > 8) <= 1e-3, name
        else:
            assert data == want[name], name


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """4 demo wood photos (names with spaces; 1st and 3rd with knots/cracks), masks and image_labels.csv."""
    return demo_data.write(tmp_path_factory.mktemp("wood data"), seed=3, size=(192, 256), n_images=4)


@pytest.fixture(scope="session")
def trained_run(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("wood_run")
    train.main(["--data", str(demo_dir), "--out", str(out), *TINY])
    return out


@pytest.fixture(scope="session")
def predict_dir(demo_dir, tmp_path_factory):
    """The demo photos plus a corrupt JPEG and a constant photo, in one folder to predict."""
    folder = tmp_path_factory.mktemp("wood predict in")
    for p in (demo_dir / "images").iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    save_image(folder / "constant photo.png", np.full((192, 256, 3), (190, 150, 110), np.uint8))
    return folder


@pytest.fixture(scope="session")
def predicted(trained_run, predict_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("wood_pred")
    predict.main(["--data", str(predict_dir), "--model", str(trained_run / "model.pt"), "--out", str(out)])
    return out
