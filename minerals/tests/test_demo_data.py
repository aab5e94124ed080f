"""The demo photo generator: the shared generator rules, and the real set's on-disk format."""
import csv

from common import io


def test_demo_photos_format(demo_generator):
    folder = demo_generator("minerals")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert classes == ["biotite", "bornite", "chrysocolla", "malachite", "muscovite", "pyrite", "quartz"]
    rows = list(csv.DictReader(open(folder / "manifest.csv")))
    assert {r["label"] for r in rows} == set(classes)
    for r in rows:
        assert io.read_rgb(folder / r["path"]).shape[2] == 3
