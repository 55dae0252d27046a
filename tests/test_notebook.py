"""The notebooks run top to bottom on a real Jupyter kernel and show what their text claims.

Each notebook is executed by nbclient on the ``python3`` kernel of this environment's
ipykernel, as a user's Jupyter would run it. Its last cell prints the run's key
numbers as JSON; the tests read them from that cell's output and check the claims a
broken method would miss.
"""

from __future__ import annotations

import json
import pathlib

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT = 300  # seconds; a whole notebook takes under a minute on a 2-core CPU


def execute(name: str, tmp_path, monkeypatch) -> dict:
    """Runs ``notebooks/<name>`` on a fresh kernel; the JSON its last cell prints."""
    # The environment's own kernel spec before any user-level "python3" one.
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")
    # The notebooks' scratch directories (tempfile) land in pytest's, removed with it.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # CellExecutionError, with the cell's traceback, if a cell fails
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code_cells), "every code cell ran"
    text = "".join(output.get("text", "") for output in code_cells[-1].outputs if output.output_type == "stream")
    return json.loads(text)


def test_gridworld_notebook_maml2_wins_on_the_isolated_task(tmp_path, monkeypatch):
    results = execute("maml2_gridworld.ipynb", tmp_path, monkeypatch)
    labels = results["labels"]
    steps = results["mean_steps"]
    # Task 9 is a k-means category of its own, and the update tendency sends it there
    # in every run. Measured here: labels [0 0 0 0 1 1 0 0 0 2], task 9 picked 2 in 4 of 4.
    assert [t for t, label in enumerate(labels) if label == labels[9]] == [9]
    assert all(run[9] == labels[9] for run in results["chosen"])
    # MAML fails task 9, MAML² does not: measured 879.9 against 34.6 steps (25x).
    assert steps["maml"]["task 9"] > 4 * steps["maml2"]["task 9"]
    # On tasks 0-8 the reset is what helps: measured 124.9 against 242.3 without it.
    assert steps["maml2"]["tasks 0-8"] < 0.8 * steps["maml2_no_reset"]["tasks 0-8"]

