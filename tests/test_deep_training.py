"""A short fixed-seed MAML-TRPO run on 2-D navigation learns, and its outputs are complete."""

import json

import jax
import numpy as np
import pytest
from flax import serialization

from maml2_jax import deep_training
import dataclasses

from maml2_jax.errors import ConfigError
from maml2_jax.learners.policy_gradient import PolicyGradientConfig
from maml2_jax.networks import PolicyConfig


def test_short_training_run_improves_post_adaptation_return(tmp_path):
    config = deep_training.TrainConfig(seed=1, meta_batch_size=10, inner=PolicyGradientConfig(num_trajectories=10),
                                       meta=dataclasses.replace(deep_training.DEEP_SCHEDULE, outer_iterations=8))
    state, (history,) = deep_training.train(config, out=str(tmp_path))
    params = state.theta
    first, last = history[0], history[-1]
    # Measured here: post-adaptation return -173 at iteration 0, -44 at iteration 7
    # (pre -228 -> -55). A broken meta-gradient leaves it near the start.
    assert last["post_return"] > first["post_return"] + 50
    # Adaptation helps at the end of the run.
    assert np.mean([h["post_return"] - h["pre_return"] for h in history[-3:]]) > 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(8))
    assert all({"pre_return", "post_return", "seconds"} <= set(r) for r in rows)
    restored = serialization.from_bytes(params, (tmp_path / "params.msgpack").read_bytes())
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(env="cheetah"), "unknown env"), (dict(algo="reptile"), "algo"), (dict(rule="lbfgs"), "rule"),
     (dict(seeds=0), "seeds"), (dict(checkpoint_every=-1), "checkpoint every"), (dict(meta_lr=float("nan")), "meta"),
     (dict(algo="maml2", pool_size=2), "cannot make"), (dict(feature="grad"), "feature"),
     (dict(curvature_fraction=2.0), "curvature"), (dict(devices=-1), "devices"),
     (dict(backend="spring"), "brax families only"), (dict(env="halfcheetah-vel", backend="bullet"), "unknown brax"),
     (dict(horizon=-5), "horizon"), (dict(classify_trajectories=40), "MAML does not classify"),
     (dict(algo="maml2", classify_trajectories=-1), "classify trajectories")],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        deep_training.TrainConfig(**kwargs)


def test_short_maml2_run_improves_and_saves_its_categories(tmp_path):
    config = deep_training.TrainConfig(
        env="nav2d-isolated", algo="maml2", seed=1, inner=PolicyGradientConfig(num_trajectories=10), pool_size=12,
        meta=dataclasses.replace(deep_training.DEEP_SCHEDULE, outer_iterations=8, categories=3, tasks_per_category=4,
                                 classify_every=4))
    state, (history,) = deep_training.train(config, out=str(tmp_path))
    # Measured here: post-adaptation return (mean over the categories) -168 at
    # iteration 0, -50 at iteration 7. A broken category update leaves it near -168.
    assert history[-1]["post_return"] > history[0]["post_return"] + 50
    assert [h["classified"] for h in history] == [True, False, False, False, True, False, False, False]
    assert all(len(h["category_post_return"]) == 3 for h in history)
    categories = json.loads((tmp_path / "categories.json").read_text())
    assert [c["iteration"] for c in categories["classifications"]] == [0, 4]
    assert all(sorted(set(c["labels"])) == [0, 1, 2] for c in categories["classifications"])
    assert len(categories["pool"]) == len(categories["pool_categories"]) == 12
    loaded, _, theta, category_params = deep_training.load_run(str(tmp_path))
    assert loaded == config
    for a, b in zip(jax.tree.leaves((theta, category_params)), jax.tree.leaves((state.theta, state.category_params))):
        np.testing.assert_array_equal(a, b)
    # θ is the mean of the category parameters (parallel global move).
    for t, c in zip(jax.tree.leaves(theta), jax.tree.leaves(category_params)):
        np.testing.assert_allclose(t, np.mean(c, axis=0), rtol=1e-5, atol=1e-6)


def test_classify_trajectories_change_the_features_and_nothing_else():
    base = deep_training.TrainConfig(
        env="nav2d-isolated", algo="maml2", horizon=10, rule="adam", pool_size=6, devices=1,
        policy=PolicyConfig(hidden_sizes=(8,)), inner=PolicyGradientConfig(num_trajectories=4),
        meta=dataclasses.replace(deep_training.DEEP_SCHEDULE, categories=2, tasks_per_category=2))
    wide = dataclasses.replace(base, classify_trajectories=32)
    parts, wide_parts = deep_training.Parts(base), deep_training.Parts(wide)
    state = parts.init(1)
    # The meta-training step is the same computation: compare exactly.
    for a, b in zip(jax.tree.leaves(parts.engine.step(state)), jax.tree.leaves(wide_parts.engine.step(state))):
        np.testing.assert_array_equal(a, b)
    # The features are those of an engine whose one learner samples 32 trajectories.
    by_32 = dataclasses.replace(base, inner=PolicyGradientConfig(num_trajectories=32))
    expected = deep_training.Parts(by_32).engine.features(state)
    features = wide_parts.engine.features(state)
    np.testing.assert_array_equal(features, expected)
    assert features.shape == parts.engine.features(state).shape
    assert not np.allclose(features, parts.engine.features(state))
    # A batch of 32 per task makes the pool's classification the largest thing in memory.
    _, factors = deep_training.memory_estimate(wide)
    assert factors["--classify-trajectories"] == 32 and "--num-trajectories" not in factors
    _, factors = deep_training.memory_estimate(wide, tasks=("--tasks", 8), steps=("--steps", 3))
    assert factors == {"--seeds": 1, "--tasks": 8, "--classify-trajectories": 32, "--horizon": 10}


def test_device_requests_are_checked():
    # The visible count depends on whether an earlier test's CLI call asked XLA for one
    # device per core before JAX started, so it is read, not assumed.
    n = jax.device_count()
    with pytest.raises(ConfigError, match=f"asked for {n + 1} devices but only {n} are visible"):
        deep_training.mesh_for(deep_training.TrainConfig(devices=n + 1))
    assert deep_training.mesh_for(deep_training.TrainConfig(devices=1)) is None


def test_maml_with_adam_through_the_cli_config():
    """`--rule adam`: the meta-gradient of the post-adaptation loss through optax's Adam,
    on the same engine; its state (Adam's moments) rides in the run state. (That the
    gradient rule learns is shown by the sine-regression example's test.)"""
    config = deep_training.TrainConfig(
        horizon=10, seed=2, meta_batch_size=4, rule="adam", meta_lr=0.01, devices=1,
        inner=PolicyGradientConfig(num_trajectories=8),
        meta=dataclasses.replace(deep_training.DEEP_SCHEDULE, outer_iterations=1))
    parts = deep_training.Parts(config)
    start = parts.init(config.seed)
    state, (history,) = deep_training.train(config)
    assert {"loss", "grad_norm", "pre_return", "post_return"} <= set(history[0])
    assert history[0]["grad_norm"] > 0
    count = jax.tree.leaves(state.rule_state)[0]  # Adam's step count, one per meta-update
    assert int(np.asarray(count).reshape(-1)[0]) == 1
    # Adam's first step moves every coordinate with a gradient by lr·|g|/(|g| + ε) ≈ lr.
    moved = np.abs(np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(state.theta),
                                                                   jax.tree.leaves(start.theta))]))
    assert moved.max() <= 0.01 * (1 + 1e-4)
    assert np.median(moved) > 0.005


def test_init_params_start_every_seed_and_category_from_a_trained_theta(tmp_path):
    small = {"horizon": 5, "rule": "sgd", "devices": 1, "checkpoint_every": 0,
             "policy": PolicyConfig(hidden_sizes=(8,)), "inner": PolicyGradientConfig(num_trajectories=2)}
    donor = deep_training.TrainConfig(env="nav2d", meta_batch_size=2, seed=3, **small,
                                      meta=dataclasses.replace(deep_training.DEEP_SCHEDULE, outer_iterations=1))
    donor_state, _ = deep_training.train(donor, out=str(tmp_path / "donor"))
    fresh = deep_training.Parts(donor).init(1).theta
    warm = deep_training.TrainConfig(
        env="nav2d-isolated", algo="maml2", seed=1, seeds=2, pool_size=4, init_params=str(tmp_path / "donor"), **small,
        meta=dataclasses.replace(deep_training.DEEP_SCHEDULE, outer_iterations=1, categories=2, tasks_per_category=2))
    start, _ = deep_training.train(warm, out=str(tmp_path / "warm"), stop_after=0)
    # Both seeds and both categories hold the donor's θ exactly; a fresh θ of seed 1 differs.
    for got, want, other in zip(jax.tree.leaves(start.theta), jax.tree.leaves(donor_state.theta),
                                jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(got, np.broadcast_to(want, got.shape))
        assert not np.array_equal(want, other)
    for got, want in zip(jax.tree.leaves(start.category_params), jax.tree.leaves(donor_state.theta)):
        np.testing.assert_array_equal(got, np.broadcast_to(want, got.shape))
    # The params.msgpack itself is accepted too, and the setting is saved with each seed.
    same = dataclasses.replace(warm, init_params=str(tmp_path / "donor" / "params.msgpack"))
    again, _ = deep_training.train(same, stop_after=0)
    for a, b in zip(jax.tree.leaves(again.theta), jax.tree.leaves(start.theta)):
        np.testing.assert_array_equal(a, b)
    saved = json.loads((tmp_path / "warm" / "seed_2" / "config.json").read_text())
    assert saved["init_params"] == str(tmp_path / "donor")
    with pytest.raises(ConfigError, match="init params must be a path"):
        dataclasses.replace(warm, init_params=3)
