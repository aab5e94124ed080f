"""The demo pair generator: the shared generator rules, and the real pair's on-disk format."""
import numpy as np
from PIL import Image

from common import io


def test_demo_pair_format(demo_generator):
    folder = demo_generator("fcnn_rgb_gt")
    for pair in [folder, folder / "extra" / "demo_val"]:
        rgba = np.asarray(Image.open(pair / "rgb.png"))
        assert rgba.ndim == 3 and rgba.shape[2] == 4 and (rgba[..., 3] == 255).all()
        gt = io.read_mask(pair / "gt.png", {0: 1, 255: 0})  # raises on any other value
        assert gt.shape == rgba.shape[:2] and 0.02 < gt.mean() < 0.5
