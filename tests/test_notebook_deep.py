"""The deep-track tour notebook runs on a real kernel and shows what its text claims.

A file of its own so that the test suite's workers run the two notebooks side by side.
"""

from __future__ import annotations

from test_notebook import execute


def test_deep_notebook_finds_the_isolated_category_and_adapts_on_it(tmp_path, monkeypatch):
    results = execute("deep_nav2d_isolated.ipynb", tmp_path, monkeypatch)
    isolated = results["isolated_category"]
    # Every classification during training puts the isolated pool tasks, and only
    # them, in one category. Measured with training seeds 1, 2 and 3: both
    # classifications of each matched the ground truth exactly (adjusted Rand index 1).
    assert [c["iteration"] for c in results["classifications"]] == [0, 5]
    assert all(c["isolated_recovered"] for c in results["classifications"])
    assert results["classifications"][-1]["adjusted_rand_index"] > 0.9
    # The update tendency picks the right category for new tasks: measured 100% in
    # every category, for each of the three seeds (3 isolated test tasks).
    accuracy = results["tendency_accuracy"]
    assert accuracy[isolated] >= 2 / 3
    assert all(a >= 0.9 for c, a in accuracy.items() if c != isolated)
    # After one step on the isolated goals, MAML² (reset to its category) is far ahead
    # of MAML and of its own no-reset ablation. Measured over seeds 1, 2, 3: return
    # −2.3, −2.5, −2.5 against MAML's −12.8, −12.7, −12.8 (gap > 10) and no reset's
    # −8.1, −8.0, −8.4 (gap > 5.5).
    after_one = {method: curves[isolated][1] for method, curves in results["mean_return"].items()}
    assert after_one["maml2"] > after_one["maml"] + 5
    assert after_one["maml2"] > after_one["maml2_no_reset"] + 3
