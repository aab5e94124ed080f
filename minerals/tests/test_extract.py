import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minerals.extract_samples import Box, boxes_for, extract, find_specimen_box, load_boxes


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def box_of(r) -> Box:
    return Box(*(int(r[k]) for k in ("x0", "y0", "x1", "y1")))


def check_index(out: Path):
    rows = read(out / "index.csv")
    for r in rows:
        assert (out / "patches" / r["patch"]).exists()
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    for src, rs in by_source.items():
        if not src:
            continue
        pos = [box_of(r) for r in rs if r["kind"] == "positive"]
        assert pos, src
        for r in rs:  # every box lies inside its image
            b = box_of(r)
            assert 0 <= b.x0 < b.x1 <= int(r["src_w"]) and 0 <= b.y0 < b.y1 <= int(r["src_h"])
        for r in rs:  # negatives touch no positive box
            if r["kind"] == "background":
                assert all(box_of(r).disjoint(p) for p in pos), src
    return rows


def test_without_box_file_finds_specimens(samples, photos):
    rows = check_index(samples)
    labels = {r["label"] for r in rows}
    assert labels == {"biotite", "bornite", "chrysocolla", "malachite", "muscovite", "pyrite", "quartz", "negative"}
    assert any(r["kind"] == "background" for r in rows) and any(r["kind"] == "synthetic" for r in rows)
    truth = load_boxes(photos / "boxes_truth.csv")
    ious = [box_of(r).iou(boxes_for(truth, r["source"])[0]) for r in rows if r["kind"] == "positive"]
    assert np.mean(ious) > 0.7, np.mean(ious)
    assert (samples / "contact_sheet_00.jpg").exists() and (samples / "boxes.csv").exists()


def test_box_iou():
    a = Box(0, 0, 10, 10)
    assert a.iou(a) == 1.0 and a.iou(Box(10, 0, 20, 10)) == 0.0
    assert a.iou(Box(5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_with_box_file_uses_given_boxes(photos, tmp_path):
    out = tmp_path / "s"
    extract(photos, out, boxes=photos / "boxes_truth.csv", patch_size=64, sheets=False)
    rows = check_index(out)
    truth = {r["path"]: r for r in read(photos / "boxes_truth.csv")}
    for r in rows:
        if r["kind"] == "positive":
            assert r["method"] == "given"
            t = truth[r["source"]]
            assert (r["x0"], r["y0"], r["x1"], r["y1"]) == (t["xmin"], t["ymin"], t["xmax"], t["ymax"])


def test_deterministic(photos, samples, tmp_path):
    out = tmp_path / "again"
    extract(photos, out, patch_size=64, seed=0, sheets=False)
    assert read(out / "index.csv") == read(samples / "index.csv")
    first = sorted((samples / "patches").rglob("*.jpg"))[:5]
    for f in first:
        assert f.read_bytes() == (out / "patches" / f.relative_to(samples / "patches")).read_bytes()


def test_box_file_formats(tmp_path):
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>100</width><height>80</height></size>"
        "<object><name>pyrite</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>50</xmax><ymax>60</ymax>"
        "</bndbox></object></annotation>")
    (tmp_path / "yolo" / "pyrite").mkdir(parents=True)
    (tmp_path / "yolo" / "pyrite" / "a.txt").write_text("0 0.5 0.5 0.2 0.25\n")
    (tmp_path / "b.csv").write_text("filename,xmin,ymin,xmax,ymax\npyrite/a.jpg,10,20,50,60\n")
    voc = boxes_for(load_boxes(tmp_path / "voc"), "pyrite/a.jpg")[0].to_pixels(100, 80)
    yolo = boxes_for(load_boxes(tmp_path / "yolo"), "pyrite/a.jpg")[0].to_pixels(100, 80)
    csv_ = boxes_for(load_boxes(tmp_path / "b.csv"), "pyrite/a.jpg")[0].to_pixels(100, 80)
    assert (voc.x0, voc.y0, voc.x1, voc.y1) == (10, 20, 50, 60) == (csv_.x0, csv_.y0, csv_.x1, csv_.y1)
    assert (yolo.x0, yolo.y0, yolo.x1, yolo.y1) == (40, 30, 60, 50)
    with pytest.raises(FileNotFoundError):
        load_boxes(tmp_path / "missing")


def test_bad_box_rows_and_files_are_named_and_skipped(tmp_path, capsys):
    (tmp_path / "b.csv").write_text("path,xmin,ymin,xmax,ymax\npyrite/a.jpg,10,20,50,60\npyrite/b.jpg,1,2,abc,9\n")
    table = load_boxes(tmp_path / "b.csv")
    assert boxes_for(table, "pyrite/a.jpg") and not boxes_for(table, "pyrite/b.jpg")
    assert f"{tmp_path / 'b.csv'}:3" in capsys.readouterr().err  # the bad row, by line
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "cut.xml").write_text("<annotation><filename>c.jpg</filename><object>")
    assert load_boxes(tmp_path / "voc") == {} and "cut.xml" in capsys.readouterr().err
    (tmp_path / "nocols.csv").write_text("path,label\npyrite/a.jpg,pyrite\n")
    with pytest.raises(ValueError, match="xmin"):
        load_boxes(tmp_path / "nocols.csv")


def test_a_bare_name_shared_by_several_images_is_refused(photos, tmp_path):
    """Box files that name images by file name alone cannot tell class folders' 0000.jpg apart: refused."""
    rows = read(photos / "boxes_truth.csv")
    bare = tmp_path / "bare.csv"
    with open(bare, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([{**r, "path": Path(r["path"]).name} for r in rows])
    with pytest.raises(SystemExit, match="match several images"):
        extract(photos, tmp_path / "out", boxes=bare, sheets=False)
    assert not (tmp_path / "out").exists()


def test_textured_background_falls_back_to_whole_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    box, method = find_specimen_box(np.asarray(Image.fromarray(img)))
    assert method == "full" and (box.x0, box.y0, box.x1, box.y1) == (0, 0, 120, 90)


def test_missing_data_or_box_file_is_one_error_line(photos, tmp_path):
    with pytest.raises(SystemExit, match="no such folder"):
        extract(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(SystemExit, match="--boxes .*no such file"):
        extract(photos, tmp_path / "out", boxes=tmp_path / "nope.csv")
    assert not (tmp_path / "out").exists()  # nothing written


def test_class_folders_outside_the_classes_are_refused(photos, tmp_path):
    """A misspelt folder ('Pyrite') used to be extracted under its own label; train.py then stopped with a
    ValueError traceback on index.csv."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(photos / "quartz", data / "quartz")
    shutil.copytree(photos / "pyrite", data / "Pyrite")
    (data / "__MACOSX" / "quartz").mkdir(parents=True)  # what unzipping a macOS archive leaves: not a class
    (data / "__MACOSX" / "quartz" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07")
    with pytest.raises(SystemExit, match=r"\['Pyrite'\] are not among"):
        extract(data, tmp_path / "out", sheets=False)
    assert not (tmp_path / "out").exists()  # nothing written
    (data / "Pyrite").rename(data / "pyrite")
    assert {r["label"] for r in extract(data, tmp_path / "out", sheets=False)} == {"quartz", "pyrite", "negative"}


@pytest.mark.parametrize("kw", [{"patch_size": 0}, {"neg_per_image": -1}, {"synthetic": float("nan")}, {"seed": -1}])
def test_option_values_that_cannot_work_are_refused(photos, tmp_path, kw):
    """--patch-size 0 wrote 1x1 px patches (and then crashed in the synthetic ones); negative counts wrote none."""
    with pytest.raises(SystemExit, match="cannot all be used"):
        extract(photos, tmp_path / "out", sheets=False, **kw)
    assert not (tmp_path / "out").exists()


def test_a_new_extraction_removes_the_patches_of_an_earlier_one(photos, tmp_path):
    """Demo patches extracted before the real set stayed in patches/ (other names), and predict.py's default
    input, patches/, then classified them with the new ones."""
    import shutil

    out = tmp_path / "out"
    extract(photos, out, patch_size=48, synthetic=0.5)
    data = tmp_path / "data"
    for c in ("quartz", "pyrite"):
        shutil.copytree(photos / c, data / c)
    (data / "pyrite" / sorted(p.name for p in (data / "pyrite").iterdir())[0]).rename(data / "pyrite" / "renamed.png")
    rows = extract(data, out, patch_size=48, synthetic=0.0, sheets=False)
    on_disk = {f.relative_to(out / "patches").as_posix() for f in (out / "patches").rglob("*.jpg")}
    assert on_disk == {r["patch"] for r in rows} and any("renamed" in p for p in on_disk)
    assert (out / "contact_sheet_00.jpg").exists()  # sheets are left alone when none are written


def test_a_box_file_that_is_not_utf8_is_one_error_line(photos, tmp_path):
    """A Latin-1 CSV (an accented image name) was a UnicodeDecodeError traceback; a BOM hid the first column."""
    bad = tmp_path / "boxes.csv"
    bad.write_bytes("path,xmin,ymin,xmax,ymax\nquartz/min\xe9ral.jpg,1,1,20,20\n".encode("latin-1"))
    with pytest.raises(SystemExit, match="boxes.csv: not UTF-8 text"):
        extract(photos, tmp_path / "out", boxes=bad, sheets=False)
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffpath,xmin,ymin,xmax,ymax\nquartz/a.jpg,1,1,20,20\n".encode("utf-8"))
    assert len(load_boxes(bom)["quartz/a.jpg"]) == 1
