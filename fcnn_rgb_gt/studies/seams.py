"""Study: how far predict's tiled output is from one untiled forward pass, with blended and with plain tiles.

    python -m fcnn_rgb_gt.studies.seams --checkpoint runs/fcnn/best.pt --image data/fcnn/rgb.png

The reference is one forward pass over the whole padded image (CPU; it breaks the 256x256 limit on purpose).
Prints, for blended overlapping tiles (predict.py's default) and for plain non-overlapping ones, the maximum and
mean absolute difference in building probability and the pixels whose class at 0.5 differs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common.io import read_rgb
from common.tiling import MAX_TILE, pad_to_grid, tile_grid


def seam_check(ckpt: Path, image_path: Path, tile: int = MAX_TILE, overlap: int = 32) -> dict:
    import torch

    from fcnn_rgb_gt.infer import building_logit, load_checkpoint, predict_probs

    model, _ = load_checkpoint(ckpt, torch.device("cpu"))
    image = read_rgb(image_path)
    h, w = image.shape[:2]
    out = {}
    for name, ov in (("blended", overlap), ("plain", 0)):
        g = tile_grid(h, w, tile, ov)
        x = torch.from_numpy(pad_to_grid(image, g)).permute(2, 0, 1)[None].float().div_(255)
        with torch.inference_mode():
            logit = building_logit(model(x.contiguous(memory_format=torch.channels_last)))[0]
            ref = torch.sigmoid(logit).numpy()[g.pad_top:g.pad_top + h, g.pad_left:g.pad_left + w]
        prob = predict_probs(model, image, tile=tile, overlap=ov)
        diff = np.abs(prob - ref)
        out[name] = {"tile": tile, "overlap": ov, "max_abs_diff": round(float(diff.max()), 4),
                     "mean_abs_diff": float(f"{diff.mean():.2e}"),
                     "pixels_changed_class": int(((prob >= 0.5) != (ref >= 0.5)).sum()), "pixels": h * w}
    return {"image": str(image_path), "size": [w, h], **out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a train.py best.pt")
    p.add_argument("--image", required=True, help="the image to predict")
    p.add_argument("--tile", type=int, default=MAX_TILE, help="tile side")
    p.add_argument("--overlap", type=int, default=32, help="overlap of the blended tiles")
    args = p.parse_args(argv)
    print(json.dumps(seam_check(Path(args.checkpoint), Path(args.image), args.tile, args.overlap), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
