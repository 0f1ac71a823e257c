"""notebooks/01-tour.ipynb runs top to bottom in a fresh kernel, and its figures and tables render."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "notebooks" / "01-tour.ipynb"


@pytest.mark.timeout(600)
def test_tour_notebook_executes(tmp_path: Path) -> None:
    nb = nbformat.read(TOUR, as_version=4)
    # The kernel is this interpreter (the project venv), whatever kernels Jupyter knows of.
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

    assert nb.metadata["kernelspec"]["name"] == NATIVE_KERNEL_NAME
    env_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    os.environ["PATH"] = env_path
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name=NATIVE_KERNEL_NAME,
        resources={"metadata": {"path": str(TOUR.parent)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    nbformat.write(nb, tmp_path / "01-tour.executed.ipynb")

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    mimes = [m for o in outputs for m in o.get("data", {})]
    # plotly figures arrive as plotly JSON (Jupyter renders them), tables as polars HTML.
    assert mimes.count("application/vnd.plotly.v1+json") >= 5
    assert mimes.count("text/html") >= 10
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "of its tokens vs" in printed and "specialised: " in printed and "tour.html" in printed
