"""The demo photo generator: the shared generator rules, and the real set's on-disk format."""
import csv

from common import io


def test_demo_photos_format(demo_generator):
    folder = demo_generator("wood_anomaly")
    images = io.list_images(folder / "images")
    assert len(images) >= 4 and all(" " in p.name for p in images)
    labels = {r["stem"]: r["label"] for r in csv.DictReader(open(folder / "image_labels.csv"))}
    for p in images:
        mask = io.read_mask(folder / "masks" / "consensus" / f"{p.stem}.png", {0: 0, 255: 1})
        assert mask.shape == io.read_rgb(p).shape[:2]
        assert (labels[p.stem] == "anomalous") == bool(mask.any())
    assert set(labels.values()) == {"anomalous", "normal"}
