"""The walk-through notebook runs top to bottom and shows the method's effect."""

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NOTEBOOK = pathlib.Path(__file__).parent.parent / "notebooks" / "maml2_gridworld.ipynb"


def test_notebook_runs_and_maml2_wins_on_the_isolated_task(monkeypatch):
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: None)
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    namespace = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), namespace)
    plt.close("all")
    # What the notebook's text claims: task 9 is alone, MAML fails it, MAML² does not.
    labels = namespace["labels"]
    assert sum(labels == labels[9]) == 1
    maml_task9 = namespace["steps_maml"][:, 9].mean()
    maml2_task9 = namespace["steps_maml2"][:, 9].mean()
    assert maml_task9 > 4 * maml2_task9
