"""The notebook runs top to bottom on demo photos with the tiny configuration (paths come from env vars), with
a benchmark record that bench.py wrote on a hand-made run (never the committed benchmarks/wood.json)."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from wood_anomaly import bench as bench_script
from wood_anomaly.tests.conftest import TINY
from wood_anomaly.tests.test_bench import fake_real_run

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "wood_anomaly.ipynb"


@pytest.mark.slow
@pytest.mark.parametrize("bench", ["none", "with_null"])
def test_notebook_executes_on_demo_data(demo_dir, tmp_path, monkeypatch, bench):
    """Without a benchmark file, and with a record of bench.py in which one pixel metric of the model is
    undefined (null, as common.io writes NaN): the notebook shows it as n/a instead of failing."""
    bench_json = tmp_path / "bench.json"
    if bench == "with_null":
        data, runs = fake_real_run(tmp_path / "fake")
        bench_script.main(["--data", str(data), "--runs", str(runs), "--out", str(bench_json), "--reuse",
                           "--protocols", "none"])
        record = json.loads(bench_json.read_text())
        record["metrics"]["pixel"]["best_iou"] = None
        bench_json.write_text(json.dumps(record))
    monkeypatch.setenv("WOOD_DATA", str(demo_dir))
    monkeypatch.setenv("WOOD_RUN", str(tmp_path / "run"))
    monkeypatch.setenv("WOOD_TRAIN_ARGS", " ".join(TINY))
    monkeypatch.setenv("WOOD_BENCH_JSON", str(bench_json))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "pixel_auroc" in outputs and (tmp_path / "run" / "pred" / "predictions.csv").exists()
    assert ("benchmark on the real photos" in outputs) == (bench == "with_null")
    if bench == "with_null":
        assert any(line.startswith("best_iou") and "n/a" in line for line in outputs.splitlines())
    figures = [o for c in nb.cells for o in c.get("outputs", [])
               if {"image/png", "image/jpeg"} & set(o.get("data", {}))]
    assert len(figures) >= 2
