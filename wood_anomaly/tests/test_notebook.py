"""The notebook runs top to bottom on demo photos with the tiny configuration (paths come from env vars)."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from wood_anomaly.tests.conftest import TINY

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "wood_anomaly.ipynb"


def test_notebook_executes_on_demo_data(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WOOD_DATA", str(demo_dir))
    monkeypatch.setenv("WOOD_RUN", str(tmp_path / "run"))
    monkeypatch.setenv("WOOD_TRAIN_ARGS", " ".join(TINY))
    monkeypatch.setenv("WOOD_BENCH_JSON", str(tmp_path / "no_bench.json"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "pixel_auroc" in outputs and (tmp_path / "run" / "pred" / "predictions.csv").exists()
    figures = [o for c in nb.cells for o in c.get("outputs", []) if {"image/png", "image/jpeg"} & set(o.get("data", {}))]
    assert len(figures) >= 2
