"""The generic MAML² core: reductions, update tendency, re-adaptation, meta-updates."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml2_jax import lane_maml2 as maml2
from maml2_jax.core import outer_update as meta_updates
from maml2_jax.core.readaptation import update_tendency
from maml2_jax.core.types import tree_norm
from maml2_jax.rules.reptile import reptile_step
from maml2_jax.errors import ConfigError
from maml2_jax.learners.sarsa import make_sarsa

from helpers import adapt_jit, greedy_path_table, lanes

RUNS = 2
K_OUT, K_IN = 3, 4

meta_train_jit = jax.jit(maml2.meta_train, static_argnums=(0, 1))
maml_jit = jax.jit(maml2.maml, static_argnums=(0, 1))
readapt_jit = jax.jit(maml2.readapt, static_argnums=(0, 5, 7))
run_schedules_jit = jax.jit(maml2.run_schedules, static_argnums=(0,), static_argnames=("adapt_episodes",))


@pytest.fixture(scope="module")
def learner(published_world):
    return make_sarsa(published_world, log_episodes=10, track_visits=False)


@pytest.fixture(scope="module")
def setup(published_world, learner):
    """``(θ_init [R], tasks [R, T], keys [R])`` for RUNS runs on the published tasks."""
    theta0 = lanes(learner.init_params(), RUNS)
    tasks = lanes(jnp.asarray(published_world.task_array()), RUNS)
    keys = jax.random.split(jax.random.key(42), RUNS)
    return theta0, tasks, keys


def split_members(runs, num_tasks, boundary):
    """Two categories: tasks [0, boundary) and [boundary, T)."""
    members = np.zeros((runs, 2, num_tasks), bool)
    members[:, 0, :boundary] = True
    members[:, 1, boundary:] = True
    return jnp.asarray(members)


# --------------------------------------------------------------------------------------
# a) MAML is MAML² with one category, bit for bit
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def maml_theta(learner, setup):
    theta0, tasks, keys = setup
    return np.asarray(maml_jit(learner, K_OUT * K_IN, theta0, tasks, keys))


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_maml_is_maml2_with_one_category(learner, setup, maml_theta, mode):
    theta0, tasks, keys = setup
    members = jnp.ones((RUNS, 1, tasks.shape[1]), bool)
    schedule = maml2.Schedule(K_OUT, K_IN, outer_update=mode)
    theta, category_params = meta_train_jit(learner, schedule, theta0, members, tasks, keys)
    assert category_params.shape == (RUNS, 1, 100, 4)
    np.testing.assert_array_equal(np.asarray(theta), maml_theta)
    np.testing.assert_array_equal(np.asarray(category_params[:, 0]), maml_theta)


def test_maml_theta_is_nontrivial(setup, maml_theta):
    theta0, _, _ = setup
    assert maml_theta.shape == (RUNS, 100, 4)
    # Meta-training moved θ, and the two runs (different keys) differ.
    assert np.abs(maml_theta - np.asarray(theta0)).max() > 1e-3
    assert not np.array_equal(maml_theta[0], maml_theta[1])


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_two_categories_differ_from_maml(learner, setup, maml_theta, mode):
    theta0, tasks, keys = setup
    schedule = maml2.Schedule(K_OUT, K_IN, outer_update=mode)
    theta, _ = meta_train_jit(learner, schedule, theta0, split_members(RUNS, 10, 9), tasks, keys)
    assert not np.array_equal(np.asarray(theta), maml_theta)


# --------------------------------------------------------------------------------------
# CatMeta: K_in Reptile steps θ_c ← θ_c + (β/|C|)(Adapt(θ_c, T, E) − θ_c)
# --------------------------------------------------------------------------------------


def _chained_reptile(learner, theta, goal, key, counters, step):
    """The CatMeta loop by hand; adaptation i uses ``adaptation_key(key, counters[i])``."""
    for counter in counters:
        _, k_agent = maml2.adaptation_key(key, counter)
        adapted = adapt_jit(learner, theta[None], jnp.asarray([goal], jnp.int32), k_agent[None], 5).q[0]
        theta = theta + step * (adapted - theta)
    return theta


def test_catmeta_one_task_category_copies_adapted_params(learner):
    """Category {task 1} out of three tasks: every step adapts on goal 90 and β/|C| = 1."""
    key = jax.random.key(5)
    theta0 = learner.init_params()
    state = run_schedules_jit(
        learner, theta0[None], jnp.asarray([[[False, True, False]]]), jnp.asarray([[39, 90, 77]], jnp.int32),
        key[None], 1, 3, adapt_episodes=5,
    )
    expected = _chained_reptile(learner, theta0, 90, key, range(3), 1.0)
    np.testing.assert_array_equal(state.theta[0], expected)
    np.testing.assert_array_equal(state.category_params[0, 0], expected)
    assert np.abs(np.asarray(expected) - 0.5).max() > 1e-2


def test_catmeta_step_is_scaled_by_category_size(learner):
    """β = 1, |C| = 2 (both members have goal 90, so the draw does not matter): step ½."""
    key = jax.random.key(6)
    theta0 = learner.init_params()
    state = run_schedules_jit(
        learner, theta0[None], jnp.asarray([[[True, True, False]]]), jnp.asarray([[90, 90, 39]], jnp.int32),
        key[None], 1, 3, adapt_episodes=5,
    )
    np.testing.assert_array_equal(state.theta[0], _chained_reptile(learner, theta0, 90, key, range(3), 0.5))
    # β = 0.5 halves it again.
    state = jax.jit(maml2.run_schedules, static_argnums=(0,), static_argnames=("adapt_episodes", "beta"))(
        learner, theta0[None], jnp.asarray([[[True, True, False]]]), jnp.asarray([[90, 90, 39]], jnp.int32),
        key[None], 1, 3, adapt_episodes=5, beta=0.5,
    )
    np.testing.assert_array_equal(state.theta[0], _chained_reptile(learner, theta0, 90, key, range(3), 0.25))


def test_catmeta_early_stop(learner):
    """A step smaller than the tolerance ends CatMeta: with a huge tolerance every
    CatMeta is one step. MAML then stops for good; MAML² with N = 1 goes on with its
    next outer iteration (adaptation counter k·K_in) — the one case where MAML and
    MAML² with one category part ways."""
    key = jax.random.key(7)
    theta0 = learner.init_params()
    members, tasks = jnp.asarray([[[True]]]), jnp.asarray([[90]], jnp.int32)
    maml_theta = jax.jit(maml2.maml, static_argnums=(0, 1), static_argnames=("stop_tolerance",))(
        learner, 4, theta0[None], tasks, key[None], stop_tolerance=1e9
    )
    np.testing.assert_array_equal(maml_theta[0], _chained_reptile(learner, theta0, 90, key, [0], 1.0))
    schedule = maml2.Schedule(2, 4, stop_tolerance=1e9)
    theta, _ = meta_train_jit(learner, schedule, theta0[None], members, tasks, key[None])
    np.testing.assert_array_equal(theta[0], _chained_reptile(learner, theta0, 90, key, [0, 4], 1.0))


# --------------------------------------------------------------------------------------
# b) the update tendency
# --------------------------------------------------------------------------------------


def test_update_tendency_picks_the_category_moved_towards():
    theta = {"a": jnp.zeros((2,)), "b": jnp.zeros((1,))}
    # θ₁ moved mostly along b, where category 2 lies.
    theta_1 = {"a": jnp.asarray([0.1, 0.0]), "b": jnp.asarray([1.0])}
    cats = {
        "a": jnp.asarray([[5.0, 0.0], [-5.0, 0.0], [0.0, 0.0]]),
        "b": jnp.asarray([[0.0], [0.0], [5.0]]),
    }
    assert int(update_tendency(theta, theta_1, cats)) == 2
    # Moving the other way along a picks category 1 instead.
    theta_1 = {"a": jnp.asarray([-1.0, 0.0]), "b": jnp.asarray([0.0])}
    assert int(update_tendency(theta, theta_1, cats)) == 1


def test_update_tendency_is_distance_decrease_not_distance():
    theta = jnp.asarray([0.0, 0.0])
    theta_1 = jnp.asarray([1.0, 0.0])
    near = jnp.asarray([1.0, 0.5])  # ‖θ₁ − near‖ = 0.5, decrease 1.118 − 0.5 = 0.618
    far = jnp.asarray([10.0, 0.0])  # ‖θ₁ − far‖ = 9, decrease 10 − 9 = 1
    cats = jnp.stack([near, far])
    assert np.linalg.norm(theta_1 - near) < np.linalg.norm(theta_1 - far)  # near is nearer...
    assert int(update_tendency(theta, theta_1, cats)) == 1  # ...but far was moved towards more
    # Order does not matter.
    assert int(update_tendency(theta, theta_1, cats[::-1])) == 0


def test_update_tendency_ties_and_batching():
    theta = jnp.zeros((3,))
    theta_1 = jnp.asarray([0.0, 1.0, 0.0])
    same = jnp.asarray([0.0, 2.0, 0.0])
    # Two identical categories: the lower index wins.
    assert int(update_tendency(theta, theta_1, jnp.stack([-same, same, same]))) == 1
    # vmapped and jitted over lanes, each lane its own answer.
    thetas_1 = jnp.stack([theta_1, -theta_1])
    cats = jnp.stack([jnp.stack([same, -same])] * 2)
    chosen = jax.jit(jax.vmap(update_tendency))(jnp.zeros((2, 3)), thetas_1, cats)
    np.testing.assert_array_equal(chosen, [0, 1])
    assert chosen.dtype == jnp.int32


# --------------------------------------------------------------------------------------
# c) re-adaptation
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def readapt_setup(published_world):
    rng = np.random.default_rng(3)
    lanes_ = 4
    theta = jnp.asarray(rng.uniform(0.3, 0.7, (lanes_, 100, 4)).astype(np.float32))
    cats = jnp.asarray(rng.uniform(0.3, 0.7, (lanes_, 3, 100, 4)).astype(np.float32))
    goals = jnp.asarray([39, 90, 77, 48], jnp.int32)
    keys = jax.random.split(jax.random.key(8), lanes_)
    return theta, cats, goals, keys


def _strip(agents):
    return agents._replace(key=jax.random.key_data(agents.key))


def test_readapt_without_reset_is_plain_adaptation(learner, readapt_setup):
    theta, cats, goals, keys = readapt_setup
    no_reset = jnp.zeros((4,), bool)
    agents, chosen = readapt_jit(learner, theta, cats, goals, keys, 6, no_reset, 2)
    plain = adapt_jit(learner, theta, goals, keys, 6)
    chex.assert_trees_all_equal(_strip(agents), _strip(plain))
    # chosen is still the update tendency after the first two episodes.
    first = adapt_jit(learner, theta, goals, keys, 2)
    expected = jax.vmap(update_tendency)(theta, first.q, cats)
    np.testing.assert_array_equal(chosen, expected)


def test_readapt_reset_jumps_to_the_chosen_category(learner, readapt_setup):
    theta, cats, goals, keys = readapt_setup
    reset = jnp.asarray([True, False, True, False])
    # episodes == reset_after: nothing runs after the reset, so the params are θ_c*.
    agents, chosen = readapt_jit(learner, theta, cats, goals, keys, 1, reset, 1)
    first = adapt_jit(learner, theta, goals, keys, 1)
    chosen = np.asarray(chosen)
    np.testing.assert_array_equal(chosen, jax.vmap(update_tendency)(theta, first.q, cats))
    for lane in range(4):
        expected = cats[lane, chosen[lane]] if reset[lane] else first.q[lane]
        np.testing.assert_array_equal(agents.q[lane], expected)
    # Only the parameters were replaced: the exploration schedule goes on.
    np.testing.assert_array_equal(agents.epsilon, first.epsilon)
    np.testing.assert_array_equal(agents.choices, first.choices)


def test_reset_to_a_good_category_cuts_the_steps(published_world, learner):
    """Reset to a category whose greedy policy walks to goal 90: steps drop to ~9."""
    good = jnp.asarray(greedy_path_table(published_world, 90))
    theta = lanes(learner.init_params(), 2)
    cats = lanes(good[None], 2)  # one category: it must be chosen
    goals = jnp.asarray([90, 90], jnp.int32)
    key = jax.random.key(17)
    keys = jnp.stack([key, key])
    agents, chosen = readapt_jit(learner, theta, cats, goals, keys, 10, jnp.asarray([True, False]), 1)
    np.testing.assert_array_equal(chosen, [0, 0])
    steps = np.asarray(agents.steps_log)
    assert steps[0, 0] == steps[1, 0]  # the first episode is shared
    assert steps[0, 0] > 20  # from θ_init the first episode is a long search
    # After the reset: close to the 9-move shortest path (ε ≤ 0.1 adds a few moves).
    assert steps[0, 1:].mean() < 15
    assert steps[0, 1:].min() >= 9
    assert steps[1, 1:].mean() > 3 * steps[0, 1:].mean()


def test_isolated_task_resets_to_its_own_category(published_world, learner):
    """Categories = greedy tables for goals 39 and 90; on task 9 (goal 90), one
    episode from θ_init moves towards the goal-90 table (its last, rewarded update
    raises Q(80, down), high only there), so the reset picks category 1."""
    cats = jnp.stack([jnp.asarray(greedy_path_table(published_world, g)) for g in (39, 90)])
    keys = jax.random.split(jax.random.key(21), 3)
    agents, chosen = readapt_jit(
        learner, lanes(learner.init_params(), 3), lanes(cats, 3), jnp.full((3,), 90, jnp.int32), keys, 10,
        jnp.ones((3,), bool), 1,
    )
    np.testing.assert_array_equal(chosen, [1, 1, 1])
    assert np.asarray(agents.steps_log)[:, 1:].mean() < 15


# --------------------------------------------------------------------------------------
# d) meta-update rules on tiny pytrees
# --------------------------------------------------------------------------------------


def test_reptile_step_by_hand():
    theta_c = {"w": jnp.asarray([1.0, 2.0]), "b": jnp.asarray([[0.0]])}
    adapted = {"w": jnp.asarray([3.0, 2.0]), "b": jnp.asarray([[4.0]])}
    new, norm = reptile_step(theta_c, adapted, 0.5)
    chex.assert_trees_all_close(new, {"w": jnp.asarray([2.0, 2.0]), "b": jnp.asarray([[2.0]])})
    np.testing.assert_allclose(norm, np.sqrt(1.0**2 + 0.0**2 + 2.0**2), rtol=1e-6)
    # β/|C| = 1: a one-task category copies the adapted parameters.
    new, norm = reptile_step(theta_c, adapted, 1.0)
    chex.assert_trees_all_equal(new, adapted)
    np.testing.assert_allclose(norm, np.sqrt(4.0 + 16.0), rtol=1e-6)
    # jit gives the same.
    chex.assert_trees_all_close(jax.jit(reptile_step)(theta_c, adapted, 0.5)[0], {
        "w": jnp.asarray([2.0, 2.0]), "b": jnp.asarray([[2.0]])})


def test_interpolate_by_hand():
    theta = {"w": jnp.asarray([0.0, 4.0]), "b": jnp.asarray(8.0)}
    theta_c = {"w": jnp.asarray([4.0, 0.0]), "b": jnp.asarray(0.0)}
    chex.assert_trees_all_close(
        meta_updates.interpolate(theta, theta_c, 0.25), {"w": jnp.asarray([1.0, 3.0]), "b": jnp.asarray(6.0)}
    )
    chex.assert_trees_all_equal(meta_updates.interpolate(theta, theta_c, 0.0), theta)


def test_interpolate_with_weight_one_is_exact():
    rng = np.random.default_rng(0)
    theta = {"q": jnp.asarray(rng.normal(size=(7, 4)).astype(np.float32))}
    theta_c = {"q": jnp.asarray(rng.normal(size=(7, 4)).astype(np.float32) * 1e-3 + 0.1234567)}
    out = meta_updates.interpolate(theta, theta_c, 1.0)
    chex.assert_trees_all_equal(out, theta_c)
    out = jax.jit(meta_updates.interpolate)(theta, theta_c, 1.0)
    chex.assert_trees_all_equal(out, theta_c)
    # The weight as a traced float32 scalar 1/N with N = 1 (as the core computes it).
    out = jax.jit(lambda a, b, n: meta_updates.interpolate(a, b, 1.0 / n))(theta, theta_c, jnp.int32(1))
    chex.assert_trees_all_equal(out, theta_c)


def test_mean_over_categories_by_hand():
    stacked = {"w": jnp.asarray([[1.0, 2.0], [3.0, 6.0], [5.0, 1.0]]), "b": jnp.asarray([0.0, 3.0, 6.0])}
    chex.assert_trees_all_close(
        meta_updates.mean_over_categories(stacked), {"w": jnp.asarray([3.0, 3.0]), "b": jnp.asarray(3.0)}
    )
    # With one category it is that category, exactly.
    one = {"w": jnp.asarray([[0.1, 0.7]])}
    chex.assert_trees_all_equal(meta_updates.mean_over_categories(one), {"w": jnp.asarray([0.1, 0.7])})


def test_tree_norm():
    tree = {"a": jnp.asarray([3.0]), "b": jnp.asarray([[0.0, 4.0]])}
    np.testing.assert_allclose(tree_norm(tree), 5.0)


# --------------------------------------------------------------------------------------
# e) sequential vs parallel outer updates
# --------------------------------------------------------------------------------------

SEQ_K_OUT, SEQ_K_IN, SEQ_N = 2, 3, 2


def _category_runs(learner, theta, members, tasks, keys, k, c):
    """CatMeta of category c in outer iteration k, as a one-category schedule."""
    state = run_schedules_jit(
        learner, theta, members[:, c : c + 1], tasks, keys, 1, SEQ_K_IN,
        key_offset=jnp.full((RUNS,), (k * SEQ_N + c) * SEQ_K_IN, jnp.int32), adapt_episodes=5,
    )
    return state.theta


@pytest.fixture(scope="module")
def two_category_results(learner, setup):
    theta0, tasks, keys = setup
    members = split_members(RUNS, 10, 6)
    out = {}
    for mode in ("sequential", "parallel"):
        schedule = maml2.Schedule(SEQ_K_OUT, SEQ_K_IN, outer_update=mode)
        out[mode] = jax.device_get(meta_train_jit(learner, schedule, theta0, members, tasks, keys))
    return members, out


def test_sequential_equals_hand_written_loop(learner, setup, two_category_results):
    """θ_c of category c starts from the θ already moved by categories < c."""
    theta0, tasks, keys = setup
    members, out = two_category_results
    theta = theta0
    category_params = [None] * SEQ_N
    for k in range(SEQ_K_OUT):
        for c in range(SEQ_N):
            theta_c = _category_runs(learner, theta, members, tasks, keys, k, c)
            category_params[c] = theta_c
            theta = meta_updates.interpolate(theta, theta_c, 1.0 / SEQ_N)
    theta_seq, cats_seq = out["sequential"]
    np.testing.assert_array_equal(theta_seq, theta)
    np.testing.assert_array_equal(cats_seq, jnp.stack(category_params, axis=1))


def test_parallel_equals_hand_written_loop(learner, setup, two_category_results):
    """Every θ_c of an outer iteration starts from the same θ; θ moves to their mean."""
    theta0, tasks, keys = setup
    members, out = two_category_results
    theta = theta0
    for k in range(SEQ_K_OUT):
        stacked = jnp.stack([_category_runs(learner, theta, members, tasks, keys, k, c) for c in range(SEQ_N)], 1)
        theta = jax.vmap(meta_updates.mean_over_categories)(stacked)
    theta_par, cats_par = out["parallel"]
    np.testing.assert_array_equal(theta_par, theta)
    np.testing.assert_array_equal(cats_par, stacked)


def test_sequential_and_parallel_differ(setup, two_category_results):
    theta0, _, _ = setup
    _, out = two_category_results
    theta_seq, cats_seq = out["sequential"]
    theta_par, cats_par = out["parallel"]
    assert not np.array_equal(theta_seq, theta_par)
    # Category 0 of the first outer iteration starts from θ_init in both modes, but
    # category 1 does not in the sequential mode, so their category 1 params differ.
    assert not np.array_equal(cats_seq[:, 1], cats_par[:, 1])
    for theta in (theta_seq, theta_par):
        assert np.abs(theta - np.asarray(theta0)).max() > 1e-3


# --------------------------------------------------------------------------------------
# Schedule validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(outer_iterations=0, inner_iterations=1), "outer iterations"),
        (dict(outer_iterations=1, inner_iterations=-2), "inner iterations"),
        (dict(outer_iterations=1, inner_iterations=1, adapt_episodes=0), "adapt episodes"),
        (dict(outer_iterations=1, inner_iterations=1, beta=0.0), "beta"),
        (dict(outer_iterations=1, inner_iterations=1, outer_update="async"), "outer update"),
    ],
)
def test_schedule_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        maml2.Schedule(**kwargs)
