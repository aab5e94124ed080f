import numpy as np
import pytest

from common.tiling import MAX_TILE, blend_window, iter_tile_batches, predict_tiled, tile_grid


@pytest.mark.parametrize("shape", [(1, 1), (255, 257), (256, 256), (2149, 1479), (300, 40)])
@pytest.mark.parametrize("overlap", [0, 32])
def test_identity_round_trip(shape, overlap):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
    out = predict_tiled(image, lambda b: b.astype(np.float32), tile=256, overlap=overlap, batch_size=4)
    assert out.shape == shape + (3,)
    if overlap == 0:
        np.testing.assert_array_equal(out, image.astype(np.float32))  # exact
    else:
        np.testing.assert_allclose(out, image, atol=1e-3)


def test_constant_image_blends_to_the_constant():
    image = np.full((700, 600, 1), 0.37, np.float32)
    # a per-tile output that is constant: the blend must return exactly that constant, no seams
    out = predict_tiled(image, lambda b: np.full(b.shape, 0.37, np.float32), tile=128, overlap=48)
    np.testing.assert_allclose(out, 0.37, rtol=1e-6)


def test_blending_hides_seams():
    """Tiles that each add their own offset: with blending, neighbouring pixels never jump by the full offset."""
    image = np.zeros((600, 600, 1), np.float32)
    counter = iter(range(1000))
    out = predict_tiled(image, lambda b: np.stack([np.full(x.shape, next(counter), np.float32) for x in b]),
                        tile=256, overlap=64, batch_size=1)[..., 0]
    jumps = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    assert jumps < 0.5  # offsets between tiles are 1 or more; the cosine ramp spreads them over 64 px


def test_tiles_never_exceed_256_and_batches_are_bounded():
    image = np.zeros((2149, 1479, 3), np.uint8)
    grid = tile_grid(2149, 1479, 256, 32)
    seen = 0
    for batch, origins in iter_tile_batches(image, tile=256, overlap=32, batch_size=5):
        assert batch.shape[1:] == (256, 256, 3) and batch.shape[0] <= 5
        assert len(origins) == batch.shape[0]
        seen += batch.shape[0]
    assert seen == len(grid)
    ph, pw = grid.padded_shape
    assert ph >= 2149 and pw >= 1479
    assert all(y + 256 <= ph and x + 256 <= pw for y, x in grid.origins)


def test_padding_before_the_image_is_even():
    for h, w in [(1, 1), (255, 257), (2149, 1479), (999, 3)]:
        grid = tile_grid(h, w, 256, 32)
        assert grid.pad_top % 2 == 0 and grid.pad_left % 2 == 0


def test_grid_covers_small_images_with_one_tile():
    grid = tile_grid(1, 1, 256, 32)
    assert len(grid) == 1 and grid.padded_shape == (256, 256)


@pytest.mark.parametrize("tile,overlap", [(257, 0), (0, 0), (256, 200), (256, -1)])
def test_bad_grid_arguments(tile, overlap):
    with pytest.raises(ValueError):
        tile_grid(100, 100, tile, overlap)
    assert MAX_TILE == 256


def test_blend_window():
    w = blend_window(64, 16)
    assert w.shape == (64, 64)
    assert w[32, 32] == 1.0 and w.min() > 0
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_array_equal(blend_window(8, 0), np.ones((8, 8)))


def test_two_dimensional_input_and_single_channel_output():
    image = np.arange(300 * 270, dtype=np.float32).reshape(300, 270)
    out = predict_tiled(image, lambda b: b[..., 0] * 2, tile=64, overlap=0)
    np.testing.assert_array_equal(out[..., 0], image * 2)


@pytest.mark.parametrize("mode", ["reflect", "symmetric", "edge", "constant"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (255, 257), (400, 300)])
def test_padding_on_the_fly_equals_np_pad(mode, shape):
    """Tiles inside the image (sliced), across one border or two (indexed) alike; each a fresh array."""
    from common.tiling import extract_tile, pad_to_grid

    image = np.random.default_rng(0).integers(0, 256, size=shape + (2,), dtype=np.uint8)
    grid = tile_grid(*shape, tile=128, overlap=16)
    ph, pw = grid.padded_shape
    pads = ((grid.pad_top, ph - shape[0] - grid.pad_top), (grid.pad_left, pw - shape[1] - grid.pad_left), (0, 0))
    np_mode = "edge" if mode == "reflect" and min(shape) == 1 else mode
    expected = np.pad(image, pads, mode=np_mode)
    np.testing.assert_array_equal(pad_to_grid(image, grid, mode), expected)
    for y, x in grid.origins:
        tile = extract_tile(image, grid, (y, x), mode)
        np.testing.assert_array_equal(tile, expected[y:y + 128, x:x + 128])
        assert not np.shares_memory(tile, image)


def test_tiling_memory_is_one_batch_not_one_image():
    import tracemalloc

    image = np.zeros((2149 * 2, 1479 * 2, 3), np.uint8)  # 19 MB
    tracemalloc.start()
    batch_bytes = max(batch.nbytes for batch, _ in iter_tile_batches(image, tile=256, overlap=32, batch_size=4))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * batch_bytes  # one batch (0.8 MB) plus gather indices, never a padded copy of the image
