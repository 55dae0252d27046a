"""`maml2 evaluate`: every method per category on shared test tasks, from trained runs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from maml2_jax import cli, deep_evaluation, deep_training
import dataclasses

from maml2_jax.errors import ConfigError
from maml2_jax.learners.policy_gradient import PolicyGradientConfig
from maml2_jax.networks import PolicyConfig

TASKS, STEPS = 8, 2


def _train(path, algo, seed, env="nav2d-isolated"):
    # Adam, not TRPO: this file tests the evaluation, and Adam's step compiles in a fraction of the time.
    config = deep_training.TrainConfig(
        env=env, algo=algo, seed=seed, rule="adam", horizon=20, meta_batch_size=4,
        policy=PolicyConfig(hidden_sizes=(16,)),
        inner=PolicyGradientConfig(num_trajectories=4), pool_size=6,
        meta=dataclasses.replace(deep_training.DEEP_SCHEDULE, outer_iterations=1, categories=3, tasks_per_category=2))
    deep_training.train(config, out=str(path))
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for algo, seed in (("maml2", 1), ("maml2", 2), ("maml", 1)):
        _train(root / f"{algo}-s{seed}", algo, seed)
    return root


def test_summary_reports_every_method_per_category(runs, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(runs), "--out", str(out), "--tasks", str(TASKS), "--steps", str(STEPS)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "adaptation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [json.loads(line)["argv"][0] for line in (out / "machines.jsonl").read_text().splitlines()] == ["evaluate"]
    assert summary["env"] == "nav2d-isolated" and summary["steps"] == STEPS
    # The isolated family's three ground-truth categories; 10% of 8 tasks is isolated.
    assert summary["categories"] == {"0": 4, "1": 3, "2": 1}
    assert set(summary["mean_return"]) == {"maml2", "maml2_no_reset", "maml", "lfs"}
    assert len(summary["runs"]["maml2"]) == 2 and len(summary["runs"]["maml"]) == 1
    assert len(summary["runs"]["lfs"]) == 2  # one fresh initialisation per distinct seed
    for method, by_category in summary["per_seed"].items():
        for c, per_seed in by_category.items():
            per_seed = np.asarray(per_seed)
            assert per_seed.shape == (len(summary["runs"][method]), STEPS + 1)
            np.testing.assert_allclose(summary["mean_return"][method][c], per_seed.mean(axis=0), rtol=1e-9)
    # Before any step MAML² and its no-reset ablation run the same θ on the same draws;
    # after the reset they differ.
    for c in summary["categories"]:
        a, b = summary["per_seed"]["maml2"][c], summary["per_seed"]["maml2_no_reset"][c]
        np.testing.assert_allclose(np.asarray(a)[:, 0], np.asarray(b)[:, 0], rtol=1e-6)
    assert summary["mean_return"]["maml2"] != summary["mean_return"]["maml2_no_reset"]
    # Two MAML² seeds: a spread; every test task of every run picked one category.
    assert summary["seed_std"]["maml2"]["0"][1] > 0
    assert sum(sum(counts.values()) for counts in summary["chosen"].values()) == 2 * TASKS
    assert set(summary["tendency_accuracy"]) <= set(summary["categories"])
    assert all(0 <= a <= 1 for a in summary["tendency_accuracy"].values())
    # Each MAML² run's own picks: every test task once, and the runs' tables add up to ``chosen``.
    per_run = summary["chosen_per_run"]
    assert sorted(per_run) == sorted(summary["runs"]["maml2"])
    total = {}
    for path, counts in per_run.items():
        assert sum(sum(by_pick.values()) for by_pick in counts.values()) == TASKS
        for truth, by_pick in counts.items():
            assert sum(by_pick.values()) == summary["categories"][truth]
            for picked, n in by_pick.items():
                total.setdefault(truth, {})[picked] = total.get(truth, {}).get(picked, 0) + n
    assert total == summary["chosen"]
    printed = capsys.readouterr().out
    assert "category 2 (1 test tasks)" in printed
    for path, counts in per_run.items():
        right = sum(by_pick.get(truth, 0) for truth, by_pick in counts.items())
        assert f"  {path}: {right} of {TASKS} (0: " in printed


def test_the_carry_rule_changes_maml2_after_the_reset_and_nothing_else(runs, tmp_path, capsys):
    out = tmp_path / "carry"
    assert cli.main(["evaluate", str(runs), "--out", str(out), "--tasks", str(TASKS), "--steps", str(STEPS),
                     "--reset-rule", "carry", "--quiet"]) == 0
    assert "resets by the 'carry' rule" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["reset_rule"] == "carry"
    carry = json.loads((out / "summary.json").read_text())
    paper = deep_evaluation.evaluate(deep_evaluation.find_runs(str(runs)), TASKS, STEPS)
    assert carry["reset_rule"] == "carry" and paper["reset_rule"] == "category"
    # The same draws, the same tendency: the methods that never reset, MAML²'s
    # return before any step and its picks are the same computation either way.
    for method in ("maml2_no_reset", "maml", "lfs"):
        assert carry["per_seed"][method] == paper["per_seed"][method]
    assert carry["chosen"] == paper["chosen"]
    for c in paper["categories"]:
        a, b = np.asarray(carry["per_seed"]["maml2"][c]), np.asarray(paper["per_seed"]["maml2"][c])
        np.testing.assert_array_equal(a[:, 0], b[:, 0])
        assert not np.array_equal(a[:, 1:], b[:, 1:])  # after the reset the carried update shows
    with pytest.raises(ConfigError, match="reset rule"):
        deep_evaluation.evaluate([str(runs / "maml-s1")], TASKS, STEPS, reset_rule="towards")


def test_a_test_time_batch_is_the_run_trained_with_that_batch(runs, tmp_path, capsys):
    # --num-trajectories 8 on runs trained with 4 is the same computation as evaluating
    # copies whose config.json names 8: compared exactly.
    given, edited = tmp_path / "given", tmp_path / "edited"
    for name in ("maml2-s1", "maml-s1"):
        shutil.copytree(runs / name, given / name)
        shutil.copytree(runs / name, edited / name)
        config = json.loads((edited / name / "config.json").read_text())
        assert config["inner"]["num_trajectories"] == 4
        config["inner"]["num_trajectories"] = 8
        (edited / name / "config.json").write_text(json.dumps(config))
    out = tmp_path / "eval"
    assert cli.main(["evaluate", str(given), "--out", str(out), "--tasks", str(TASKS), "--steps", str(STEPS),
                     "--num-trajectories", "8", "--quiet"]) == 0
    assert "samples 8 trajectories per test task" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["num_trajectories"] == 8
    overridden = json.loads((out / "summary.json").read_text())
    assert set(overridden["num_trajectories"].values()) == {8}
    reference = deep_evaluation.evaluate(deep_evaluation.find_runs(str(edited)), TASKS, STEPS)
    assert overridden["per_seed"] == reference["per_seed"] and overridden["chosen"] == reference["chosen"]
    # and it is not the runs' own batch: every return is estimated from its step's batch.
    own = deep_evaluation.evaluate([str(given / "maml-s1")], TASKS, STEPS)
    assert own["num_trajectories"] == {str(given / "maml-s1"): 4}
    assert not np.array_equal(own["per_seed"]["maml"]["0"], overridden["per_seed"]["maml"]["0"])


def test_a_single_run_directory_is_accepted(runs):
    assert deep_evaluation.find_runs(str(runs / "maml-s1")) == [str(runs / "maml-s1")]
    assert len(deep_evaluation.find_runs(str(runs))) == 3


def test_runs_are_found_through_symbolic_links_and_a_link_loop_ends(tmp_path):
    # Only config.json marks a run for the search, so empty runs do here.
    elsewhere = tmp_path / "elsewhere" / "maml"
    for seed in (1, 2):
        (elsewhere / f"seed_{seed}").mkdir(parents=True)
        (elsewhere / f"seed_{seed}" / "config.json").write_text('{"env": "nav2d"}')
    here = tmp_path / "here"
    (here / "maml2" / "seed_1").mkdir(parents=True)
    (here / "maml2" / "seed_1" / "config.json").write_text('{"env": "nav2d"}')
    (here / "maml").symlink_to(elsewhere, target_is_directory=True)
    (here / "maml2" / "loop").symlink_to(here, target_is_directory=True)
    assert deep_evaluation.find_runs(str(here)) == [str(here / "maml" / "seed_1"), str(here / "maml" / "seed_2"),
                                                     str(here / "maml2" / "seed_1")]


def test_runs_of_different_families_are_refused(runs, tmp_path):
    other = _train(tmp_path / "uniform", "maml", 3, env="nav2d")
    with pytest.raises(ConfigError, match="different task families"):
        deep_evaluation.evaluate([str(runs / "maml-s1"), other], TASKS, STEPS)


def test_pooled_evaluations_equal_one_evaluation_of_all_runs(runs):
    # Each run is adapted on its own with the tasks of key(seed) and the rollouts of
    # key(seed + 1): evaluating the runs in two parts and pooling is the same
    # computation as evaluating them together, compared exactly.
    every = deep_evaluation.find_runs(str(runs))  # maml-s1, maml2-s1, maml2-s2
    joint = deep_evaluation.evaluate(every, TASKS, STEPS)
    # split 1: seed 1's learning from scratch is in both parts and counts once.
    for split in (1, 2):
        parts = [deep_evaluation.evaluate(every[:split], TASKS, STEPS),
                 deep_evaluation.evaluate(every[split:], TASKS, STEPS)]
        assert parts[0]["per_seed"] != joint["per_seed"]
        assert deep_evaluation.pool(parts) == joint
    assert joint["runs"]["lfs"] == ["seed 1", "seed 2"]


def test_evaluations_that_differ_are_not_pooled(runs):
    one, two = str(runs / "maml2-s1"), str(runs / "maml2-s2")
    base = deep_evaluation.evaluate([one], TASKS, STEPS, devices=1)
    # pool reads only the summaries: the second evaluation is base's, of another run, with one setting changed.
    other = json.loads(json.dumps(base).replace(one, two))
    assert deep_evaluation.pool([base, other])["runs"]["maml2"] == [one, two]
    for change, match in (({"seed": 1}, "different seeds"),
                          ({"reset_rule": "carry"}, "different reset rules"),
                          ({"steps": STEPS + 1}, "different adaptation steps"),
                          ({"env": "nav2d"}, "different task families"),
                          ({"num_trajectories": {two: 8}}, "different trajectories per adaptation step"),
                          ({"categories": {"0": 5, "1": 3, "2": 1}}, "different test tasks per category"),
                          ({"devices": 2}, "different numbers of devices")):
        with pytest.raises(ConfigError, match=match):
            deep_evaluation.pool([base, {**other, **change}])
    with pytest.raises(ConfigError, match="more than one evaluation"):
        deep_evaluation.pool([base, base])
    # An evaluation from before the per-run picks pools; its runs' picks are only in ``chosen``.
    pooled = deep_evaluation.pool([base, {k: v for k, v in other.items() if k != "chosen_per_run"}])
    assert pooled["chosen_per_run"] == base["chosen_per_run"] and list(pooled["chosen_per_run"]) == [one]
    assert sum(pooled["chosen"]["0"].values()) == 2 * base["categories"]["0"]
    # An evaluation from before --devices ran on one device, and pools as one.
    assert base["devices"] == 1 and deep_evaluation.pool([base, {k: v for k, v in other.items() if k != "devices"}])
    older = {k: v for k, v in other.items() if k != "num_trajectories"}  # summaries before the test-time batch
    with pytest.raises(ConfigError, match="without 'num_trajectories' cannot be pooled"):
        deep_evaluation.pool([base, older])
    with pytest.raises(ConfigError, match="no evaluations"):
        deep_evaluation.pool([])


def test_evaluate_pool_writes_the_joint_evaluation(runs, tmp_path, capsys):
    one, two = str(runs / "maml2-s1"), str(runs / "maml2-s2")
    flags = ["--tasks", str(TASKS), "--steps", str(STEPS), "--quiet"]
    for name, run in (("a", one), ("b", two)):
        assert cli.main(["evaluate", run, "--out", str(tmp_path / name), *flags]) == 0
    out = tmp_path / "pooled"
    pooled_dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert cli.main(["evaluate", "--pool", *pooled_dirs, "--out", str(out), "--quiet"]) == 0
    # The pool of what the two evaluations wrote (which equals one evaluation of both runs:
    # test_pooled_evaluations_equal_one_evaluation_of_all_runs).
    written = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("a", "b")]
    pooled = json.loads((out / "summary.json").read_text())
    assert pooled == deep_evaluation.pool(written) and pooled["runs"]["maml2"] == [one, two]
    config = json.loads((out / "config.json").read_text())
    assert config["runs"] == [one, two] and config["pooled"] == pooled_dirs and config["tasks"] == TASKS
    assert config["devices"] == pooled["devices"] == written[0]["devices"]
    assert (out / "adaptation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    # The pooled settings come from the evaluations; anything else is refused before writing.
    for argv, match in ((["--pool", pooled_dirs[0], "--tasks", "8"], "--tasks: --pool reads"),
                        (["--pool", pooled_dirs[0], "--devices", "1"], "--devices: --pool reads"),
                        ([one, "--pool", pooled_dirs[0]], "--pool reads the runs"),
                        ([], "give a run directory"),
                        (["--pool", one], "is not a maml2 evaluate output"),
                        (["--pool", pooled_dirs[0], pooled_dirs[0]], "more than one evaluation")):
        assert cli.main(["evaluate", *argv, "--out", str(tmp_path / "refused")]) == 2
        assert match in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert cli.main(["evaluate", "--pool", *pooled_dirs, "--out", pooled_dirs[0]]) == 2
    assert "is one of the pooled evaluations" in capsys.readouterr().err


_SPLIT = """
import json, sys
from maml2_jax import deep_evaluation
runs = deep_evaluation.find_runs(sys.argv[1])
print(json.dumps([deep_evaluation.evaluate(runs, int(sys.argv[2]), int(sys.argv[3]), devices=d) for d in (1, 0)]))
"""


def test_test_tasks_split_over_devices_give_the_one_device_curves(runs):
    # 8 test tasks over 3 simulated devices: padded to 9, each device adapting its own.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3", JAX_PLATFORMS="cpu",
               MAML2_COMPILE_CACHE="off")
    done = subprocess.run([sys.executable, "-c", _SPLIT, str(runs), str(TASKS), str(STEPS)], env=env,
                          capture_output=True, text=True, check=True)
    one, split = json.loads(done.stdout.strip().splitlines()[-1])
    assert (one["devices"], split["devices"]) == (1, 3)
    assert split["categories"] == one["categories"] and split["runs"] == one["runs"]
    # The same tasks, keys and steps; only XLA's float32 rounding of a batch of 3 tasks
    # against one of 8 differs (measured on 2-D navigation: under 1e-6 relative; the
    # bound, 1e-4, is the meta-batch split's in test_task_sharding). A task paired with
    # another's key moved a category's mean by 12% when tried.
    for method, by_category in one["per_seed"].items():
        for c, rows in by_category.items():
            np.testing.assert_allclose(split["per_seed"][method][c], rows, rtol=1e-4, err_msg=f"{method} {c}")
    assert split["chosen_per_run"] == one["chosen_per_run"]
