"""Study: what the deep features add. Score one trained model's two standardised maps (deep texture, colour
rarity) fused with other weights, ``deep^w * colour^(1-w)`` (0: colour map alone, 1: deep map alone), against
the masks and the image labels, with the checkpoint's label-free threshold and area rule for every weight.

    python -m wood_anomaly.studies.fusion_weights --model runs/wood_bench/model.pt --data ../shared/data/wood \
        --weights 0,0.2,0.5,1 --json runs/wood_bench/fusion_weights.json

The maps are computed by predict.score_maps exactly as predict.py computes them, at full size, so the model's
own weight reproduces its predict.py figures (up to predict's float16 storage of the map). The measured table
is in wood_anomaly/EXPERIMENTS.md. Not part of the product: train.py and predict.py never import it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common.config import HelpFormatter
from common.io import dumps_json, list_images, read_mask, read_rgb, write_json
from wood_anomaly import predict
from wood_anomaly.bench import ranking, vote_groups
from wood_anomaly.evaluate import pixel_metrics


def fusion_weights(model_path: Path, data: Path, weights: list[float], device: str = "cpu", votes=None) -> dict:
    """``{"deep_weight=<w>": {"pixel", "image", "labels"}}`` for each of ``weights``: pixel metrics of the fused
    maps against ``<data>/masks/consensus``, the photo scores (ranked against ``votes``, bench.vote_groups, when
    given) and the photo labels of the checkpoint's threshold and ``min_area``."""
    import torch

    from wood_anomaly.data import resize_map
    from wood_anomaly.model import fuse
    from wood_anomaly.train import resolve_device

    dev = resolve_device(device)
    model, cfg, ckpt = predict.load_model(model_path, dev)
    if cfg.colour_stride <= 0:
        raise SystemExit(f"{model_path}: the model has no colour channel (--colour-stride 0): no fusion to vary")
    threshold = ckpt["threshold"]
    parts, masks, shapes, stems = [], [], [], []
    with torch.no_grad():
        for path in list_images(data / "images"):
            image = read_rgb(path)
            parts.append(predict.score_maps(model, image, cfg, dev, ckpt))
            shapes.append(image.shape[:2])
            stems.append(path.stem)
            masks.append(read_mask(data / "masks" / "consensus" / f"{path.stem}.png", {0: 0}, default=1).astype(bool))
    out = {}
    for w in weights:
        maps = [resize_map(fuse(deep, colour, w), shape) for (deep, colour), shape in zip(parts, shapes)]
        binary = [m > threshold for m in maps]
        scores = {s: float(m.max() / threshold) for s, m in zip(stems, maps)}
        out[f"deep_weight={w:g}"] = {
            "pixel": pixel_metrics(maps, masks, binary),
            "image": ranking(scores, votes) if votes else {"scores": scores},
            "labels": {s: predict.photo_label(int(b.sum()), float(b.mean()), cfg.min_area)
                       for s, b in zip(stems, binary)}}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--model", default="runs/wood_bench/model.pt", help="checkpoint written by train.py")
    p.add_argument("--data", default="../shared/data/wood", help="folder with images/, masks/consensus/ "
                                                                 "(and image_labels.csv for the image ranking)")
    p.add_argument("--weights", default="0,0.2,0.5,1", help="comma-separated deep weights w to score")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="device of the maps")
    p.add_argument("--json", default="", help="also write the result here")
    args = p.parse_args(argv)
    data = Path(args.data)
    labels = data / "image_labels.csv"
    has_votes = labels.is_file() and "n_votes" in labels.read_text().splitlines()[0]  # the real set's vote counts
    votes = vote_groups(labels) if has_votes else None
    weights = sorted({float(w) for w in args.weights.split(",") if w.strip()})
    out = fusion_weights(Path(args.model), data, weights, args.device, votes)
    for name, v in out.items():
        m = v["pixel"]
        print(f"{name:16s} AUROC {m['pixel_auroc']:.4f}  AP {m['pixel_ap']:.3f}  AUPRO {m['aupro_0.3']:.3f}  "
              f"best F1 {m['best_f1']:.3f}  mask F1 {m['mask_f1']:.3f}  "
              f"anomalous {sum(lab == 'anomalous' for lab in v['labels'].values())}/{len(v['labels'])}")
    if args.json:
        write_json(args.json, out)
    else:
        print(dumps_json(out, indent=1))
    return out


if __name__ == "__main__":
    main()
