"""The deep track's online setting (maml2_jax.deep_online) at a tiny size: a horizon of 10
steps, a policy with 8 hidden units, 4 trajectories per step, an Adam meta-step (the
cheapest rule to compile; the properties checked here do not depend on the rule)."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from maml2_jax import deep_online, deep_training
from maml2_jax.core import train as engine_lib
from maml2_jax.core.readaptation import adaptation_curve
from maml2_jax.core.types import take
from maml2_jax.errors import ConfigError
from maml2_jax.io.checkpoint import Checkpoints
from maml2_jax.learners.policy_gradient import PolicyGradientConfig
from maml2_jax.networks import PolicyConfig

TRAIN = deep_training.TrainConfig(
    env="nav2d-isolated", horizon=10, rule="adam", meta_batch_size=2, algo="maml2", pool_size=8,
    policy=PolicyConfig(hidden_sizes=(8,)), inner=PolicyGradientConfig(num_trajectories=4),
    meta=dataclasses.replace(deep_training.DEEP_SCHEDULE, tasks_per_category=2))
CONFIG = deep_online.OnlineDeepConfig(train=TRAIN, trials=3, arrivals=3, initial_pool=4, iterations_per_arrival=1,
                                      steps=2)


def _advance(trial_ids, start=0, stop=CONFIG.arrivals, states=None, records=None, config=CONFIG):
    states = deep_online.init_states(config, trial_ids) if states is None else states
    records = deep_online.empty_records(config) if records is None else records
    return deep_online.advance(config, states, records, start, stop), records


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_same(a, b):
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def batch():
    """All three trials side by side, every arrival, in one go."""
    return _advance(range(CONFIG.trials))


def test_bad_config_refused():
    for bad in ({"trials": 0}, {"arrivals": -1}, {"initial_pool": 1.5}, {"iterations_per_arrival": 0},
                {"steps": True}, {"seed": -1}, {"checkpoint_every": -1}, {"methods": ()},
                {"methods": "maml"}, {"methods": ("maml", "maml")}, {"methods": ("reptile",)},
                {"methods": ("maml2-N0",)}, {"methods": ("maml2-N5",)}, {"train": {"env": "nav2d"}},
                {"initial_pool": 1, "arrivals": 2}):  # 3 pool tasks, 4 category slots
        with pytest.raises(ConfigError):
            dataclasses.replace(CONFIG, **bad)
    one_slot = dataclasses.replace(TRAIN.meta, categories=1, max_categories=1)
    with pytest.raises(ConfigError):
        dataclasses.replace(CONFIG, train=dataclasses.replace(TRAIN, meta=one_slot))
    with pytest.raises(ConfigError, match="init params apply to maml2 train only"):
        dataclasses.replace(CONFIG, train=dataclasses.replace(TRAIN, init_params="runs/a"))
    assert deep_online.method_categories("maml2-N3") == 3 and deep_online.method_categories("maml2-auto") == "auto"


def test_a_size_that_cannot_fit_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "online"
    with pytest.raises(ConfigError, match=r"warm start needs at least .* lower --trials \(1000000000\)"):
        deep_online.run(dataclasses.replace(CONFIG, trials=10**9), out=str(out))
    # K steps hold K + 1 batches: the product says so, and the advice names --steps's own value.
    refusal = r"adaptation of the arrival needs at least .*\(steps \+ 1\).* lower --steps \(1000000000\)"
    with pytest.raises(ConfigError, match=refusal):
        deep_online.run(dataclasses.replace(CONFIG, steps=10**9), out=str(out))
    assert not out.exists()
    deep_online.check_memory(CONFIG)  # the test's own size fits


@pytest.mark.slow  # compiles the deep programs for 3 trials: ~3 min on 2 cores
def test_arrivals_shared_across_methods(batch):
    states, records = batch
    starts = deep_online.init_states(CONFIG, range(CONFIG.trials))
    # The same θ_init, pool and arriving tasks (and run key: the adaptations' streams) in every method.
    for field in ("theta", "source", "key"):
        _assert_same(getattr(starts["maml"], field), getattr(starts["maml2-auto"], field))
    _assert_same(states["maml"].source, states["maml2-auto"].source)
    assert np.all(np.asarray(states["maml"].source.size) == CONFIG.capacity)
    assert np.asarray(states["maml"].members).all()  # MAML's one category took in every arrival
    # Arrival a is pool entry I + a; its recorded category is the pool's ground truth there.
    truth = np.asarray(states["maml"].source.truth)[:, CONFIG.initial_pool:]
    np.testing.assert_array_equal(np.asarray(records["arrival_category"]).T, truth)
    # The trials differ from one another.
    assert not np.array_equal(np.asarray(states["maml"].source.pool[0]), np.asarray(states["maml"].source.pool[1]))


@pytest.mark.slow  # compiles the deep programs for 3 trials: ~3 min on 2 cores
def test_trial_alone_equals_trial_in_batch(batch):
    states, records = batch
    # MAML² alone (its host classification is the part a batch could disturb): one more
    # compilation of its programs for a batch of one; MAML's would double that.
    auto = dataclasses.replace(CONFIG, methods=("maml2-auto",))
    alone, alone_records = _advance([2], config=auto)
    for m in auto.methods:
        mine = jax.tree.map(lambda x: x[2:], states[m])
        # The same keys, tasks, classifications and steps. The floats agree to rounding
        # only: XLA compiles the vmapped program for one trial differently from the one for
        # three (measured: |Δθ| <= 3e-8 after 3 arrivals, returns bitwise equal here); a
        # trial that drew another trial's keys would differ by O(1).
        for x, y in zip(_leaves(alone[m]), _leaves(mine), strict=True):
            if np.issubdtype(x.dtype, np.inexact):
                np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
            else:
                np.testing.assert_array_equal(x, y)
        np.testing.assert_allclose(np.asarray(alone_records["returns"][m])[:, 0],
                                   np.asarray(records["returns"][m])[:, 2], rtol=0, atol=1e-4)
    for name in ("categories", "picked"):
        np.testing.assert_array_equal(np.asarray(alone_records[name]["maml2-auto"])[:, 0],
                                      np.asarray(records[name]["maml2-auto"])[:, 2])
    np.testing.assert_array_equal(np.asarray(alone_records["arrival_category"])[:, 0],
                                  np.asarray(records["arrival_category"])[:, 2])


@pytest.mark.slow  # compiles the deep programs for 3 trials: ~3 min on 2 cores
def test_warm_start_continues_exactly(batch, tmp_path):
    states, records = batch
    first, partial = _advance(range(CONFIG.trials), stop=1)
    saved = Checkpoints(str(tmp_path))
    saved.save(1, first, {"records": partial})
    restored, record = saved.restore(deep_online.init_states(CONFIG, range(CONFIG.trials)))
    saved.close()
    rest, rest_records = _advance(range(CONFIG.trials), 1, states=restored, records=record["records"])
    for m in CONFIG.methods:
        _assert_same(rest[m], states[m])
        assert int(np.asarray(rest[m].iteration)[0]) == CONFIG.arrivals * CONFIG.iterations_per_arrival
    assert rest_records == json.loads(json.dumps(records))


@pytest.mark.slow  # compiles the deep programs for 3 trials: ~3 min on 2 cores
def test_resume_equals_uninterrupted(batch, tmp_path):
    _, records = batch
    out = str(tmp_path / "run")

    def interrupt(row):
        if row["arrival"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        deep_online.run(CONFIG, out, progress=interrupt)
    assert not os.path.exists(os.path.join(out, "summary.json"))
    with pytest.raises(ConfigError):
        deep_online.run(dataclasses.replace(CONFIG, seed=5), out, resume=True)
    rows = []
    summary = deep_online.run(CONFIG, out, progress=rows.append, resume=True)
    assert [row["arrival"] for row in rows] == [2]
    assert summary == json.loads(json.dumps(summary))  # strict JSON, as written
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["methods"] == summary["methods"]
    expected = deep_online.summarize(CONFIG, records)
    assert summary["methods"] == expected["methods"]
    auto = summary["methods"]["maml2-auto"]
    assert len(auto["categories"]) == CONFIG.trials and all(1 <= n <= 4 for row in auto["categories"] for n in row)
    assert set(auto["groups"]) == {"all", "isolated", "other"}
    assert "vs_maml" in auto and "vs_maml" not in summary["methods"]["maml"]
    deep_online.plot(summary, str(tmp_path / "online.png"))
    assert os.path.getsize(tmp_path / "online.png") > 0


def test_the_carry_reset_rule_reaches_the_maml2_arrivals_only():
    carry_config = dataclasses.replace(CONFIG, reset_rule="carry")
    states = deep_online.init_states(CONFIG, [0, 1])
    maml = [deep_online.method_parts(c, "maml").curves(states["maml"]) for c in (CONFIG, carry_config)]
    _assert_same(maml[0], maml[1])  # MAML never resets: the same program under either rule
    method = deep_online.method_parts(carry_config, "maml2-auto")
    state = states["maml2-auto"]
    # Slots spread around θ so that the reset moves the policy (at the start every θ_c is θ).
    offsets = jax.random.normal(jax.random.key(4), (state.members.shape[1], 1))
    spread = jax.tree.map(lambda c: c + 0.3 * offsets.reshape((1, -1) + (1,) * (c.ndim - 2)),
                          state.category_params)
    members = np.zeros(state.members.shape, bool)
    members[:, :, 0] = True  # every slot holds a category
    state = state.replace(category_params=spread, members=members)
    returns, picked = method.curves(state)
    by_category = deep_online.method_parts(CONFIG, "maml2-auto").curves(state)
    np.testing.assert_array_equal(picked, by_category[1])  # read from round 0, before the rule acts
    # What the core's carry rule gives, one trial at a time (jitted and vmapped there, eager
    # here: float32 sums of the same rollouts, equal to well within 1e-5).
    learner, _ = deep_training.shared_parts(carry_config.method_train("maml2-auto")).one_step_learners()
    for t in range(2):
        one = jax.tree.map(lambda x, t=t: x[t], state)
        key = jax.random.fold_in(jax.random.wrap_key_data(one.key),
                                 np.uint32(deep_online.ARRIVAL_COUNTER) + np.uint32(int(one.source.size)))
        task = take(one.source.pool, int(one.source.size))
        expected = adaptation_curve(learner, CONFIG.steps, one.theta, task, key, one.category_params, True,
                                    engine_lib.active(one), reset_rule="carry")
        np.testing.assert_allclose(returns[t], expected[0], rtol=1e-5)
        assert int(picked[t]) == int(expected[1])
    # ... and it is not the paper's rule's curve after the reset.
    assert np.max(np.abs(np.asarray(returns)[:, 1:] - np.asarray(by_category[0])[:, 1:])) > 1e-3


def test_classify_trajectories_reach_the_maml2_methods_only():
    wide = dataclasses.replace(CONFIG, train=dataclasses.replace(TRAIN, classify_trajectories=16))
    # Accepted with MAML among the methods: MAML never classifies, so its arrivals keep the inner batch.
    assert wide.method_train("maml").classify_trajectories == 0
    assert wide.method_train("maml2-auto").classify_trajectories == 16
    method = deep_online.method_parts(wide, "maml2-auto")
    states = deep_online.init_states(wide, [0])["maml2-auto"]
    state = jax.tree.map(lambda x: x[0], states)
    # The pool's features are those of a run whose inner loop samples 16 trajectories.
    by_16 = dataclasses.replace(CONFIG, train=dataclasses.replace(TRAIN, inner=PolicyGradientConfig(num_trajectories=16)))
    expected = deep_online.method_parts(by_16, "maml2-auto").engine.features(state)
    np.testing.assert_array_equal(method.engine.features(state), expected)
    # The arrival's tendency is read from a 16-trajectory step; its returns and θ₁ stay the
    # 4-trajectory ones. Slot 0 lies along the 4-trajectory update, slot 1 along the
    # 16-trajectory one (ten updates away, so each reading picks its own slot by a margin
    # set by the angle between two noisy gradients, not by rounding).
    learner, tendency = deep_training.shared_parts(wide.method_train("maml2-auto")).one_step_learners()
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key),
                             np.uint32(deep_online.ARRIVAL_COUNTER) + np.uint32(int(state.source.size)))
    task = take(state.source.pool, int(state.source.size))
    theta_4, _ = learner.adapt(state.theta, task, jax.random.fold_in(key, 0))
    theta_16, _ = tendency.adapt(state.theta, task, jax.random.fold_in(key, CONFIG.steps + 1))
    slots = [jax.tree.map(lambda t, a: t + 10 * (a - t), state.theta, adapted) for adapted in (theta_4, theta_16)]
    slots += [state.theta] * (state.members.shape[0] - 2)
    members = np.zeros(states.members.shape, bool)
    members[:, :2] = True
    states = states.replace(category_params=jax.tree.map(lambda *x: np.stack(x)[None], *slots), members=members)
    returns, picked = method.curves(states)
    assert int(picked[0]) == 1
    one = jax.tree.map(lambda x: x[0], states)
    without = adaptation_curve(learner, CONFIG.steps, one.theta, task, key, one.category_params, True,
                               engine_lib.active(one))
    assert int(without[1]) == 0  # the inner batch alone would have picked the other slot
    # Round 0's return, jitted and vmapped here, eager there: ten float32 steps of the same
    # rollout, equal to well within 1e-5; a 16-trajectory batch would differ by O(1).
    np.testing.assert_allclose(np.asarray(returns[0])[0], np.asarray(without[0])[0], rtol=1e-5)


_SPLIT = """
import dataclasses, json, sys, tempfile
from maml2_jax import deep_online
sys.path.insert(0, sys.argv[1])
from test_deep_online import CONFIG

config = dataclasses.replace(CONFIG, trials=2, arrivals=2, methods=("maml2-N2",))
one = deep_online.run(dataclasses.replace(config, devices=1))
split = deep_online.run(config)
out = tempfile.mkdtemp()
deep_online.run(config, out, stop_after=1)
resumed = deep_online.run(config, out, resume=True)
print(json.dumps([{k: s[k] for k in ("devices", "methods")} for s in (one, split, resumed)]))
"""


def test_trials_split_over_devices_give_the_one_device_results():
    # 2 trials over 3 simulated devices: padded to 3 (the last trial repeated), one per device.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3", JAX_PLATFORMS="cpu",
               MAML2_COMPILE_CACHE="off")
    done = subprocess.run([sys.executable, "-c", _SPLIT, os.path.dirname(__file__)], env=env, capture_output=True,
                          text=True, check=True)
    one, split, resumed = json.loads(done.stdout.strip().splitlines()[-1])
    assert (one["devices"], split["devices"], resumed["devices"]) == (1, 3, 3)
    # The same keys, tasks, classifications and steps; only XLA's float32 rounding of a
    # batch of one trial against one of two differs (measured: 5e-7 on returns up to 7;
    # the bound is the evaluation split's). Trials whose rows were mixed up, or a padding
    # copy recorded in place of a trial, would differ by O(1).
    mine, theirs = split["methods"]["maml2-N2"], one["methods"]["maml2-N2"]
    np.testing.assert_allclose(mine["returns"], theirs["returns"], rtol=1e-4, atol=1e-4)
    assert mine["ari"] == theirs["ari"]  # the same labels at every classification
    assert mine["tendency_accuracy"] == theirs["tendency_accuracy"]
    # Checkpoints hold the 2 trials; the resumed split run is the uninterrupted one exactly.
    assert resumed["methods"] == split["methods"]


def test_a_run_from_before_the_devices_option_resumes_on_one_device(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    saved = deep_online._config_json(CONFIG)
    del saved["devices"]  # as a run started before the option wrote it: its trials ran on one device
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=r"was started with --devices 1: resume it with --devices 1"):
        deep_online.run(CONFIG, str(out), resume=True, stop_after=0)
    summary = deep_online.run(dataclasses.replace(CONFIG, devices=1), str(out), resume=True, stop_after=0)
    assert summary["devices"] == 1 and summary["arrivals_done"] == 0
    # A run that recorded its count is told it back; another difference gets the general refusal.
    (out / "config.json").write_text(json.dumps(deep_online._config_json(dataclasses.replace(CONFIG, devices=2))))
    with pytest.raises(ConfigError, match=r"--devices 2: resume it with --devices 2"):
        deep_online.run(CONFIG, str(out), resume=True, stop_after=0)
    with pytest.raises(ConfigError, match="another experiment's config"):
        deep_online.run(dataclasses.replace(CONFIG, seed=3), str(out), resume=True, stop_after=0)
