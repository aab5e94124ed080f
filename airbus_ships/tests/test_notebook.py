"""The EDA notebook executes top to bottom on demo data (pointed at by DATA_ROOT)."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "Exploratory_data_analysis.ipynb"


@pytest.mark.slow
def test_notebook_executes(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(demo_dir.parent))  # the notebook reads $DATA_ROOT/airbus
    monkeypatch.delenv("MPLBACKEND", raising=False)  # a forced Agg backend would hide the kernel's inline figures
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "images" in text and "not representative" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
