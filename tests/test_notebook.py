"""The quickstart notebook runs headless, top to bottom, on a tiny setting (fails on any cell error)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import shared_dataset

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path):
    root = shared_dataset("tgs_salt")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if c.cell_type == "code")
    assert "OVERRIDES" in params.source, "the first code cell must hold the notebook's parameters"
    tiny = ["train.epochs=1", "folds.n_splits=2", "data.limit=24", "model.encoder=tu-test_efficientnet",
            "model.encoder_weights=null", "model.encoder_weights_map=names",
            "train.num_workers=0", "predict.batch_size=250", f"submission.path={tmp_path / 'sub.csv'}"]
    params.source = f"DATA_ROOT = {str(root)!r}\nRUNS_DIR = {str(tmp_path / 'runs')!r}\nOVERRIDES = {tiny!r}"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "CV tgs_map" in outputs and "OOF tgs_map" in outputs and "sub.csv OK" in outputs
