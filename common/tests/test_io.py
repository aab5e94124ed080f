import json
import re

import numpy as np
import pytest
from PIL import Image

from common import io


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)


def test_png_round_trip_and_name_with_spaces(tmp_path, rgb):
    path = tmp_path / "a file with spaces.png"
    io.save_image(path, rgb)
    np.testing.assert_array_equal(io.read_rgb(path), rgb)


def test_jpeg(tmp_path, rgb):
    path = tmp_path / "x.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    out = io.read_rgb(path)
    assert out.shape == rgb.shape and out.dtype == np.uint8


def test_rgba_drops_alpha_or_composites(tmp_path, rgb):
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    alpha[0, 0] = 0
    path = tmp_path / "rgba.png"
    io.save_image(path, np.concatenate([rgb, alpha], axis=-1))
    np.testing.assert_array_equal(io.read_rgb(path), rgb)  # alpha dropped, colours kept
    composited = io.read_rgb(path, background=(255, 255, 255))
    np.testing.assert_array_equal(composited[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(composited[1:], rgb[1:])


def test_grayscale_and_palette(tmp_path, rgb):
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = io.read_rgb(tmp_path / "g.png")
    assert out.shape == rgb.shape
    np.testing.assert_array_equal(out[..., 1], gray)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert io.read_rgb(tmp_path / "p.png").shape == rgb.shape


def test_16_bit(tmp_path):
    arr16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    Image.fromarray(arr16).save(tmp_path / "16.png")
    out = io.read_rgb(tmp_path / "16.png")
    np.testing.assert_array_equal(out[..., 0], (arr16 >> 8).astype(np.uint8))


def test_exif_rotation(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :5] = 255  # white band on the left
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    out = io.read_rgb(tmp_path / "rot.jpg")
    assert out.shape == (20, 10, 3)  # displayed upright: width and height swapped
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # the band is now on top


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` RGB pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def test_corrupt_empty_missing_and_folder(tmp_path, rgb):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "garbage.jpg").write_bytes(b"this is not an image")
    io.save_image(tmp_path / "ok.png", rgb)
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "bomb.png").write_bytes(png_claiming(50000, 50000))  # Pillow's DecompressionBombError
    cases = {"empty.png": "empty", "garbage.jpg": "not a readable image", "truncated.png": "corrupt",
             "missing.png": "not found", ".": "folder", "bomb.png": "too large"}
    for name, reason in cases.items():
        with pytest.raises(io.ImageReadError) as err:
            io.read_rgb(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and reason in str(err.value)


def test_pixel_limit_is_checked_from_the_header(tmp_path, rgb, monkeypatch, capsys):
    """A 40000 x 40000 PNG of a few hundred bytes is refused before decoding; the limit can be raised."""
    (tmp_path / "bomb.png").write_bytes(png_claiming(40000, 40000))  # 1.6 Gpx: under Pillow's own 2x refusal
    for read in (io.read_rgb, lambda p: io.read_mask(p, default=0)):
        with pytest.raises(io.ImageReadError, match="1600 Mpx, over the limit of 200 Mpx"):
            read(tmp_path / "bomb.png")
    io.save_image(tmp_path / "ok.png", rgb)
    h, w = rgb.shape[:2]
    monkeypatch.setenv("VISION_MAX_PIXELS", str(h * w - 1))
    with pytest.raises(io.ImageReadError, match="VISION_MAX_PIXELS"):
        io.read_rgb(tmp_path / "ok.png")
    monkeypatch.setenv("VISION_MAX_PIXELS", str(h * w))
    np.testing.assert_array_equal(io.read_rgb(tmp_path / "ok.png"), rgb)
    monkeypatch.setenv("VISION_MAX_PIXELS", "lots")
    assert io.max_pixels() == io.DEFAULT_MAX_PIXELS
    assert "VISION_MAX_PIXELS='lots' is not a positive number" in capsys.readouterr().err


def test_read_mask_mapping(tmp_path):
    gt = np.array([[0, 255], [255, 0]], np.uint8)
    io.save_image(tmp_path / "gt.png", np.repeat(gt[..., None], 3, axis=2))  # RGB with identical channels
    np.testing.assert_array_equal(io.read_mask(tmp_path / "gt.png", {0: 1, 255: 0}), [[1, 0], [0, 1]])
    io.save_image(tmp_path / "bad.png", np.array([[0, 128]], np.uint8))
    with pytest.raises(io.ImageReadError, match="unexpected mask values 128"):
        io.read_mask(tmp_path / "bad.png", {0: 1, 255: 0})
    np.testing.assert_array_equal(io.read_mask(tmp_path / "bad.png", {0: 1}, default=0), [[1, 0]])
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    io.save_image(tmp_path / "colour.png", colour)
    with pytest.raises(io.ImageReadError, match="channels differ"):
        io.read_mask(tmp_path / "colour.png")
    with pytest.raises(io.ImageReadError, match="channels differ"):
        io.read_mask(tmp_path / "colour.png", colours=True)


def test_read_mask_palette_indices_or_colours(tmp_path):
    """A black-and-white mask saved with a 2-colour palette: its indices are labels by default, its colours with
    ``colours=True`` (the FCN exercise's gt.png)."""
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE,
                                                                          colors=2).save(tmp_path / "p.png")
    indices = io.read_mask(tmp_path / "p.png")
    assert sorted(np.unique(indices)) == [0, 1]
    np.testing.assert_array_equal(io.read_mask(tmp_path / "p.png", {0: 1, 255: 0}, colours=True), [[1, 0], [0, 1]])


def test_rle_known_case():
    # 3x3 image, column-major numbering: pixels 1..3 are column 0, 4..6 column 1
    mask = io.rle_decode("1 2 5 2", shape=(3, 3))
    np.testing.assert_array_equal(mask, [[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    assert io.rle_encode(mask) == "1 2 5 2"
    assert io.rle_decode("", (3, 3)).sum() == 0 and io.rle_decode(float("nan"), (3, 3)).sum() == 0
    assert io.rle_encode(np.zeros((3, 3))) == ""
    full = io.rle_decode("1 589824")
    assert full.shape == (768, 768) and full.all()


def test_rle_random_round_trips():
    rng = np.random.default_rng(1)
    for _ in range(20):
        shape = tuple(rng.integers(1, 60, size=2))
        mask = (rng.random(shape) > rng.random()).astype(np.uint8)
        np.testing.assert_array_equal(io.rle_decode(io.rle_encode(mask), shape), mask)


@pytest.mark.parametrize("rle,reason", [("1 2 3", "odd"), ("0 2", "below 1"), ("1 0", "positive"),
                                        ("8 5", "beyond"), ("1 4 3 2", "overlap"), ("5 1 1 1", "overlap"),
                                        ("1 x", "non-integer")])
def test_rle_malformed(rle, reason):
    with pytest.raises(io.RLEError, match=reason):
        io.rle_decode(rle, shape=(3, 3))


def test_atomic_writes_leave_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    io.write_json(target, {"a": np.float32(1.5), "b": np.arange(2)})
    assert json.loads(target.read_text()) == {"a": 1.5, "b": [0, 1]}
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text())["a"] == 1.5  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left


def test_write_json_undefined_metrics_are_null(tmp_path, strict_json):
    """NaN / inf (Python, numpy, inside an array) were written as bare NaN / Infinity, which strict parsers reject."""
    target = io.write_json(tmp_path / "metrics.json", {"auroc": float("nan"), "ratio": np.float32("inf"),
                                                        "curve": np.array([0.5, np.nan, -np.inf]),
                                                        "nested": [{"f1": np.float64("nan")}, (1, np.int64(2))],
                                                        "kept": np.float32(1.5)})
    assert strict_json(target.read_text()) == {"auroc": None, "ratio": None, "curve": [0.5, None, None],
                                               "nested": [{"f1": None}, [1, 2]], "kept": 1.5}
    assert strict_json(io.dumps_json({"a": float("-inf")}, indent=1)) == {"a": None}  # what stdout printers use
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        io.dumps_json({"a": object()})


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    """Outputs written atomically are as readable as ones written by open() (not mkstemp's owner-only 0600)."""
    (tmp_path / "plain.txt").write_text("x")
    with io.atomic_write(tmp_path / "atomic.txt") as f:
        f.write("x")
    with io.atomic_path(tmp_path / "by_name.png") as tmp:
        tmp.write_bytes(b"x")  # what a library that writes by file name does
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes["atomic.txt"] == modes["by_name.png"] == modes["plain.txt"], modes


def test_list_images(tmp_path, rgb):
    for name in ["b.PNG", "a.jpg", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in io.list_images(tmp_path)] == ["a.jpg", "b.PNG"]


def test_save_figure_is_atomic_and_closes_the_figure(tmp_path):
    """save_figure writes a PNG by its suffix through a temporary file (nothing left beside it), closes the
    figure (no pile-up of open figures in long runs), and leaves an existing file whole when saving fails."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.io import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = save_figure(fig, tmp_path / "plots" / "curve.png", dpi=50)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in out.parent.iterdir()) == ["curve.png"]
    before = out.read_bytes()
    fig, _ = plt.subplots()
    with pytest.raises(ValueError):
        save_figure(fig, out, dpi=-1)  # matplotlib refuses the dpi mid-save
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.iterdir()) == ["curve.png"]
    plt.close("all")


def test_remove_leftovers_of_a_killed_write_and_no_other_file(tmp_path):
    names = [".predictions.ab12cd34.tmp.csv", ".timings.x_y_z_w1.tmp.csv", ".predictions.shard-1-of-2.ab12cd34.tmp.csv",
             "predictions.csv", ".preds.ab12cd34.tmp.png", ".predictions.notmine.tmp.csv.bak", ".a[1].ab12cd34.tmp.png"]
    for n in names:
        (tmp_path / n).write_text("x")
    io.remove_leftovers(tmp_path, ["predictions.csv", "timings.csv", "a[1].png"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:6])
    with io.atomic_path(tmp_path / "new.csv") as tmp:  # the pattern is atomic_path's own
        tmp.write_text("y")
        assert re.fullmatch(r"\.new\.[a-z0-9_]{8}\.tmp\.csv", tmp.name)


def test_read_rgb_refuses_an_image_smaller_than_the_caller_can_use(tmp_path, rgb):
    io.save_image(tmp_path / "ok.png", rgb)
    h, w = rgb.shape[:2]
    assert io.read_rgb(tmp_path / "ok.png", min_side=min(h, w)).shape == rgb.shape
    with pytest.raises(io.ImageReadError, match=rf"too small to classify \({w} x {h} px; at least {min(h, w) + 1} px"):
        io.read_rgb(tmp_path / "ok.png", min_side=min(h, w) + 1, purpose="classify")
