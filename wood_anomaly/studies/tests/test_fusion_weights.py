"""The fusion-weight study reproduces predict.py's figures at the model's own weight, and other weights differ."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from wood_anomaly import evaluate
from wood_anomaly.studies.fusion_weights import fusion_weights


@pytest.mark.slow
def test_own_weight_reproduces_the_model_and_others_vary(trained_run, demo_dir, predicted):
    own = torch.load(trained_run / "model.pt", weights_only=True)["config"]["deep_weight"]
    out = fusion_weights(trained_run / "model.pt", demo_dir, [0.0, own, 1.0], "cpu")
    model = evaluate.evaluate(predicted, demo_dir / "masks" / "consensus", None)
    mine = out[f"deep_weight={own:g}"]
    for key in ("pixel_auroc", "pixel_ap", "aupro_0.3", "best_f1"):
        assert mine["pixel"][key] == pytest.approx(model[key], abs=2e-3), key
    with open(predicted / "predictions.csv", newline="") as f:
        labels = {Path(r["image"]).stem: r["label"] for r in csv.DictReader(f) if "demo" in r["image"]}
    assert mine["labels"] == labels
    ap = [out[f"deep_weight={w:g}"]["pixel"]["pixel_ap"] for w in (0.0, own, 1.0)]
    assert ap[0] != ap[1] != ap[2]
