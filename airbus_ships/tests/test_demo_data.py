"""The demo image generator: the shared generator rules, and the Kaggle set's on-disk format."""
import csv

import numpy as np
import pytest

from common import io


@pytest.mark.slow
def test_demo_images_format(demo_generator):
    folder = demo_generator("airbus_ships")
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
