"""Bad checkpoint files for the tests of predict.py, evaluate.py and train.py --resume."""
from __future__ import annotations

import numpy as np
import torch

from minerals.config import CLASSES


class Evil:
    """Unpickling runs os.system: a malicious checkpoint (the marker file shows whether it ran)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def bad_checkpoint(path, kind: str) -> str:
    """Write a bad checkpoint of ``kind`` at ``path``; returns a word its message must hold."""
    import os
    import pickle

    if kind == "empty":
        path.write_bytes(b"")
        return "empty"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return "not a pytorch checkpoint"
    if kind == "text":
        path.write_bytes(b"not a torch file at all")
        return "not a pytorch checkpoint"
    if kind == "truncated":
        torch.save({"model": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:300])
        return "corrupt"
    if kind == "state_dict_only":
        torch.save({"state_dict": {}}, path)
        return "not a checkpoint of minerals/train.py"
    if kind == "other_task":  # the shape of another task's train.py checkpoint (fcnn: model, optimizer, config ...)
        torch.save({"model": {"conv1.weight": torch.zeros(8, 3, 3, 3)}, "optimizer": {}, "epoch": 3,
                    "config": {"tile": 128}, "history": []}, path)
        return "not a checkpoint of minerals/train.py"
    if kind == "wrong_shape":  # minerals' keys, weights of another network
        torch.save({"model": {"w": torch.zeros(3)}, "classes": CLASSES, "backbone": "orenet", "img_size": 48,
                    "threshold": 0.5, "config": {}}, path)
        return "do not fit"
    if kind == "folder":
        path.mkdir()
        return "folder"
    if kind == "dangling":
        path.symlink_to(path.parent / "gone.pt")
        return "not found"
    marker = path.parent / "pwned"
    if kind == "evil_pickle":  # a bare pickle (protocol 5): torch's safe unpickler stops at its first frame
        path.write_bytes(pickle.dumps({"model": Evil(marker)}, protocol=5))
        return "not a pytorch checkpoint"
    torch.save({"model": Evil(marker)}, path)  # evil_torch: inside torch.save's zip, the global is named
    assert not os.path.exists(marker)
    return "refused: loading it would run python code (posix.system)"
