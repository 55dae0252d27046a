"""Tabular SARSA learner: hand-worked updates and a plain-Python reference (DESIGN §1.1)."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml2_jax.envs.gridworld import GridWorld
from maml2_jax.learners import sarsa
from maml2_jax.learners.sarsa import SarsaConfig, make_sarsa

from helpers import Draws, adapt_jit, lanes

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


# --------------------------------------------------------------------------------------
# The plain-Python reference: the ordinary SARSA loop of DESIGN §1.1.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Reference:
    q: np.ndarray  # [S, 4] float32 final table
    steps: list  # moves of each episode
    cut: list  # whether each episode was cut at max_steps
    mu: np.ndarray  # [S, 4] visit counts of the last episode / its length
    choices: int  # action choices made (= random draws consumed)
    epsilon: np.float32  # ε for the next choice


def td_error(gamma, next_q, q, fused: bool) -> np.float32:
    """``γ·Q(s′, a′) − Q(s, a)`` in float32, optionally as one fused multiply-add.

    XLA's CPU (and GPU) code generators may contract ``γ·x − y`` into an FMA, which
    rounds once instead of twice; the reference follows the backend
    (:func:`backend_fuses_td_error`) so the two agree bit for bit and greedy
    near-ties break the same way. The float64 product of two float32 numbers is exact,
    so rounding the float64 difference to float32 is the FMA result.
    """
    if fused:
        return np.float32(np.float64(gamma) * np.float64(next_q) - np.float64(q))
    return np.float32(gamma * next_q - q)


def reference_adapt(world: GridWorld, config: SarsaConfig, q0, goal: int, key, episodes: int,
                    fused: bool = False) -> Reference:
    """``Adapt(q0, goal, episodes)`` with ordinary loops and NumPy float32 arithmetic.

    The t-th action choice uses ``sarsa.draw(key, t)``: a random action when
    ``u < ε``, else the greedy action with ties to the lowest index; ε is multiplied
    by the decay after every choice. ``fused``: see :func:`td_error`.
    """
    table = world.next_cell_table()
    draws = Draws(key)
    q = np.array(q0, np.float32, copy=True)
    alpha = np.float32(config.alpha)
    gamma = np.float32(config.gamma)
    decay = np.float32(config.epsilon_decay)
    one = np.float32(1.0)
    state = {"eps": np.float32(config.epsilon), "t": 0}

    def choose(s):
        u, random_action = draws[state["t"]]
        a = random_action if u < state["eps"] else int(np.argmax(q[s]))  # argmax: first max
        state["eps"] = np.float32(state["eps"] * decay)
        state["t"] += 1
        return a

    steps, cuts = [], []
    visits = None
    for _ in range(episodes):
        visits = np.zeros(q.shape, np.int64)
        s = world.start
        a = choose(s)
        n = 0
        reached = False
        for _step in range(world.max_steps):
            s2 = int(table[s, a])
            visits[s, a] += 1
            n += 1
            if s2 == goal:
                q[s, a] = q[s, a] + alpha * (one - q[s, a])
                reached = True
                break
            a2 = choose(s2)
            q[s, a] = q[s, a] + alpha * td_error(gamma, q[s2, a2], q[s, a], fused)
            s, a = s2, a2
        steps.append(n)
        cuts.append(not reached)
    mu = visits.astype(np.float32) / np.float32(steps[-1])
    return Reference(q=q, steps=steps, cut=cuts, mu=mu, choices=state["t"], epsilon=state["eps"])


_FUSION = {}


def backend_fuses_td_error(config: SarsaConfig) -> bool:
    """Whether the compiled learner computes ``γ·Q(s′,a′) − Q(s,a)`` with one rounding.

    Probed on a 1x3 corridor with ε = 0: two greedy moves right make exactly one
    bootstrapped update of Q(0, right) from values (p, c) for which the two roundings
    differ; the learner must produce one of them.
    """
    if config in _FUSION:
        return _FUSION[config]
    alpha, gamma = np.float32(config.alpha), np.float32(config.gamma)
    rng = np.random.default_rng(0)
    for _ in range(100_000):
        p, c = rng.uniform(0.3, 0.7, 2).astype(np.float32)
        plain = p + alpha * td_error(gamma, c, p, False)
        fused = p + alpha * td_error(gamma, c, p, True)
        if plain != fused:
            break
    else:
        raise AssertionError("no probe values found")
    world = GridWorld(rows=1, cols=3, walls=(), start=0, goals=(2,))
    learner = make_sarsa(world, dataclasses.replace(config, epsilon=0.0), log_episodes=1)
    q0 = np.zeros((3, 4), np.float32)
    q0[0, RIGHT], q0[1, RIGHT] = p, c
    agent = adapt_jit(learner, jnp.asarray(q0)[None], jnp.asarray([2], jnp.int32), jnp.stack([jax.random.key(0)]), 1)
    got = np.asarray(agent.q)[0, 0, RIGHT]
    assert got in (plain, fused), (got, plain, fused)
    _FUSION[config] = bool(got == fused)
    return _FUSION[config]


def run_lanes(learner, q0s, goals, keys, episodes):
    agents = adapt_jit(learner, jnp.asarray(np.stack(q0s)), jnp.asarray(goals, jnp.int32), jnp.stack(keys), episodes)
    return jax.device_get(agents)


def take(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def check_against_reference(world, config, learner, q0s, goals, keys, episodes):
    agents = run_lanes(learner, q0s, goals, keys, episodes)
    fused = backend_fuses_td_error(config)
    refs = []
    for i, (q0, goal, key) in enumerate(zip(q0s, goals, keys)):
        ref = reference_adapt(world, config, q0, goal, key, episodes, fused)
        agent = take(agents, i)
        assert int(agent.episodes) == episodes
        np.testing.assert_array_equal(np.asarray(learner.performance(agent)), ref.steps[: agent.steps_log.shape[0]])
        assert int(agent.last_steps) == ref.steps[-1]
        assert int(agent.choices) == ref.choices
        assert int(agent.cell) == world.start  # the last episode ended
        chex.assert_trees_all_close(np.asarray(agent.q), ref.q, atol=1e-6, rtol=0)
        np.testing.assert_allclose(float(agent.epsilon), float(ref.epsilon), rtol=1e-6)
        refs.append(ref)
    return agents, refs


# --------------------------------------------------------------------------------------
# a) single updates, by hand
# --------------------------------------------------------------------------------------


def test_draw_is_in_range_and_keyed_by_t():
    key = jax.random.key(3)
    us, actions = jax.vmap(sarsa.draw, in_axes=(None, 0))(key, jnp.arange(4000))
    us, actions = np.asarray(us), np.asarray(actions)
    assert us.dtype == np.float32 and actions.dtype == np.int32
    assert np.all((0.0 <= us) & (us < 1.0))
    assert set(np.unique(actions)) == {0, 1, 2, 3}
    # Roughly uniform (4000 draws: the mean of U[0,1) is within 0.05 of 1/2).
    assert abs(us.mean() - 0.5) < 0.05
    # The stream is indexed by t, not by call order.
    u7, a7 = sarsa.draw(key, jnp.int32(7))
    assert float(u7) == us[7] and int(a7) == actions[7]
    u_other, _ = sarsa.draw(jax.random.key(4), jnp.int32(7))
    assert float(u_other) != us[7]


def test_greedy_hand_worked_updates(line_world):
    """ε = 0 on the 1x3 corridor: every value below is worked out by hand."""
    config = SarsaConfig(epsilon=0.0)
    learner = make_sarsa(line_world, config, log_episodes=3)
    q0 = np.full((3, 4), 0.5, np.float32)
    q0[:, RIGHT] = 0.6  # greedy = right everywhere
    agent = learner.start(jnp.asarray(q0), jnp.int32(2), jax.random.key(0))
    tick = jax.jit(learner.tick)
    goal, on = jnp.int32(2), jnp.bool_(True)

    # t0: at 0 choose right, move to 1; nothing to update yet.
    agent = tick(agent, goal, on)
    assert int(agent.cell) == 1 and bool(agent.pending)
    np.testing.assert_array_equal(agent.q, q0)

    # t1: at 1 choose right. Pending (0, right) bootstraps on Q(1, right) = 0.6:
    #   Q(0, right) = 0.6 + 0.1 (0.99 * 0.6 - 0.6) = 0.5994;
    # the move reaches the goal: Q(1, right) = 0.6 + 0.1 (1 - 0.6) = 0.64.
    agent = tick(agent, goal, on)
    q = np.asarray(agent.q)
    np.testing.assert_allclose(q[0, RIGHT], 0.5994, atol=1e-7)
    np.testing.assert_allclose(q[1, RIGHT], 0.64, atol=1e-7)
    expected = q0.copy()
    expected[0, RIGHT], expected[1, RIGHT] = q[0, RIGHT], q[1, RIGHT]
    np.testing.assert_array_equal(q, expected)  # nothing else moved
    assert int(agent.episodes) == 1 and int(agent.cell) == 0 and not bool(agent.pending)
    assert int(agent.last_steps) == 2

    # t2: new episode at 0, right again (0.5994 > 0.5); no pending update.
    agent = tick(agent, goal, on)
    np.testing.assert_array_equal(agent.q, q)
    assert int(agent.cell) == 1

    # t3: Q(0, right) = 0.5994 + 0.1 (0.99 * 0.64 - 0.5994) = 0.60282;
    #     Q(1, right) = 0.64 + 0.1 (1 - 0.64) = 0.676.
    agent = tick(agent, goal, on)
    q = np.asarray(agent.q)
    np.testing.assert_allclose(q[0, RIGHT], 0.60282, atol=1e-6)
    np.testing.assert_allclose(q[1, RIGHT], 0.676, atol=1e-6)
    assert int(agent.episodes) == 2
    np.testing.assert_array_equal(np.asarray(agent.steps_log), [2, 2, 0])
    # ε = 0 stays 0; choices count every tick.
    assert float(agent.epsilon) == 0.0 and int(agent.choices) == 4


def test_greedy_ties_go_to_lowest_index(line_world):
    """From Q = 0.5 everywhere with ε = 0: up (index 0) first, then down once up drops."""
    learner = make_sarsa(line_world, SarsaConfig(epsilon=0.0))
    agent = learner.start(jnp.full((3, 4), 0.5, jnp.float32), jnp.int32(2), jax.random.key(0))
    goal, on = jnp.int32(2), jnp.bool_(True)
    agent = learner.tick(agent, goal, on)  # t0: up (tie), stays at 0
    assert int(agent.prev_action) == UP and int(agent.cell) == 0
    agent = learner.tick(agent, goal, on)  # t1: still a tie -> up; Q(0, up) = 0.4995
    assert int(agent.prev_action) == UP
    np.testing.assert_allclose(agent.q[0, UP], 0.5 + 0.1 * (0.99 * 0.5 - 0.5), atol=1e-7)
    agent = learner.tick(agent, goal, on)  # t2: up lost the tie -> down (index 1)
    assert int(agent.prev_action) == DOWN
    # Q(0, up) = 0.4995 + 0.1 (0.99 * Q(0, down) - 0.4995) = 0.49905
    np.testing.assert_allclose(agent.q[0, UP], 0.49905, atol=1e-7)


def test_epsilon_decays_per_choice(line_world):
    learner = make_sarsa(line_world)
    agent = learner.start(learner.init_params(), jnp.int32(2), jax.random.key(1))
    eps = np.float32(0.1)
    for _ in range(7):
        agent = learner.tick(agent, jnp.int32(2), jnp.bool_(True))
        eps = np.float32(eps * np.float32(0.999))
    np.testing.assert_allclose(float(agent.epsilon), 0.1 * 0.999**7, rtol=1e-6)
    assert float(agent.epsilon) == eps


@pytest.mark.parametrize("world_kind", ["line", "published_cut"])
def test_every_tick_follows_the_sarsa_rule(line_world, world_kind):
    """Tick by tick with draws: the ε-greedy choice, the move, and the two kinds of update.

    Before each tick, the expected action comes from ``sarsa.draw(key, t)`` and the
    current ε; after it, exactly the pending entry (bootstrapped on the new choice)
    and, on reaching the goal, the chosen entry (target 1) have changed.
    """
    if world_kind == "line":
        world, goal, ticks = line_world, 2, 60
    else:
        world, goal, ticks = GridWorld(max_steps=4, goals=(11,)), 11, 80
    config = SarsaConfig(epsilon=0.5, epsilon_decay=0.99)
    learner = make_sarsa(world, config)
    tick = jax.jit(learner.tick)
    table = world.next_cell_table()
    key = jax.random.key(11)
    rng = np.random.default_rng(0)
    q0 = rng.uniform(0.2, 0.8, (world.num_states, 4)).astype(np.float32)
    if world_kind == "line":
        q0[:, RIGHT] += 0.3  # greedy heads for the goal, so episodes do end
    agent = jax.device_get(learner.start(jnp.asarray(q0), jnp.int32(goal), key))
    alpha, gamma = np.float32(0.1), np.float32(0.99)
    kinds = set()
    for t in range(ticks):
        u, random_action = (np.asarray(x) for x in sarsa.draw(key, jnp.int32(t)))
        q_before, s = np.asarray(agent.q), int(agent.cell)
        greedy = int(np.argmax(q_before[s]))
        a = int(random_action) if u < agent.epsilon else greedy
        kinds.add("random" if u < agent.epsilon else "greedy")
        flush = bool(agent.cut)
        new = jax.device_get(tick(agent, jnp.int32(goal), jnp.bool_(True)))
        assert int(new.prev_action) == a and int(new.prev_cell) == s
        assert int(new.choices) == t + 1
        assert float(new.epsilon) == np.float32(agent.epsilon * np.float32(0.99))
        expected = q_before.copy()
        if bool(agent.pending):
            ps, pa = int(agent.prev_cell), int(agent.prev_action)
            expected[ps, pa] = q_before[ps, pa] + alpha * (gamma * q_before[s, a] - q_before[ps, pa])
            kinds.add("bootstrap")
        s2 = s if flush else int(table[s, a])
        if s2 == goal and not flush:
            expected[s, a] = q_before[s, a] + alpha * (np.float32(1.0) - q_before[s, a])
            kinds.add("terminal")
            assert int(new.cell) == world.start and int(new.episodes) == int(agent.episodes) + 1
        elif flush:
            kinds.add("flush")
            assert int(new.cell) == world.start and int(new.episodes) == int(agent.episodes) + 1
            assert int(new.last_steps) == world.max_steps
        else:
            assert int(new.cell) == s2 and int(new.episodes) == int(agent.episodes)
        chex.assert_trees_all_close(np.asarray(new.q), expected, atol=1e-7, rtol=0)
        agent = new
    assert {"random", "greedy", "bootstrap"} <= kinds
    assert "terminal" in kinds
    if world_kind == "published_cut":
        assert "flush" in kinds


def test_inactive_tick_changes_nothing(published_world):
    learner = make_sarsa(published_world)
    agent = learner.start(learner.init_params(), jnp.int32(39), jax.random.key(5))
    for _ in range(5):
        agent = learner.tick(agent, jnp.int32(39), jnp.bool_(True))
    frozen = learner.tick(agent, jnp.int32(39), jnp.bool_(False))
    chex.assert_trees_all_equal(jax.random.key_data(frozen.key), jax.random.key_data(agent.key))
    chex.assert_trees_all_equal(frozen._replace(key=None), agent._replace(key=None))


# --------------------------------------------------------------------------------------
# b) the lane-batched adaptation equals the plain loop
# --------------------------------------------------------------------------------------


def test_adapt_matches_reference_published(published_world):
    """30 episodes from θ_init on three published tasks, each lane vs the reference."""
    config = SarsaConfig()
    learner = make_sarsa(published_world, config, log_episodes=30)
    goals = [39, 90, 77]
    keys = [jax.random.fold_in(jax.random.key(2024), i) for i in range(3)]
    q0s = [np.full((100, 4), 0.5, np.float32)] * 3
    _, refs = check_against_reference(published_world, config, learner, q0s, goals, keys, 30)
    # The comparison is not vacuous: learning happened and some episodes were long.
    for ref in refs:
        assert max(ref.steps) > 50 and ref.steps[-1] < max(ref.steps)


def test_adapt_matches_reference_random_init(published_world):
    """From a random Q-table (no greedy ties) with a higher ε: still step for step."""
    config = SarsaConfig(epsilon=0.3, epsilon_decay=0.995, alpha=0.2, gamma=0.95)
    learner = make_sarsa(published_world, config, log_episodes=12)
    rng = np.random.default_rng(7)
    q0s = [rng.uniform(0.0, 1.0, (100, 4)).astype(np.float32) for _ in range(2)]
    keys = [jax.random.key(7), jax.random.key(8)]
    check_against_reference(published_world, config, learner, q0s, [98, 48], keys, 15)


def test_adapt_matches_reference_with_cut_episodes():
    """max_steps = 5: episodes are cut; the cut step bootstraps on a draw at the next cell."""
    world = GridWorld(max_steps=5, goals=(1, 10, 11, 39))
    config = SarsaConfig(epsilon=0.2)
    learner = make_sarsa(world, config, log_episodes=40)
    goals = list(world.goals)
    keys = [jax.random.fold_in(jax.random.key(99), g) for g in goals]
    q0s = [np.full((100, 4), 0.5, np.float32)] * len(goals)
    agents, refs = check_against_reference(world, config, learner, q0s, goals, keys, 40)
    cuts = [c for ref in refs for c in ref.cut]
    assert any(cuts) and not all(cuts)
    # The goal-39 lane can never finish within 5 moves: every episode is cut, and each
    # cut episode costs max_steps + 1 choices (the extra draw at the last cell).
    assert all(refs[3].cut) and refs[3].choices == 40 * 6
    assert int(agents.choices[3]) == 40 * 6


# --------------------------------------------------------------------------------------
# c) the classification feature
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_steps", [1000, 5])
def test_feature_is_q_times_last_episode_visit_frequencies(max_steps):
    world = GridWorld(max_steps=max_steps)
    config = SarsaConfig()
    learner = make_sarsa(world, config, log_episodes=5, track_visits=True)
    goals = [39, 90]
    keys = [jax.random.key(31), jax.random.key(32)]
    q0s = [np.full((100, 4), 0.5, np.float32)] * 2
    agents, refs = check_against_reference(world, config, learner, q0s, goals, keys, 12)
    features = np.asarray(jax.vmap(learner.feature)(agents))
    assert features.shape == (2, 400)
    for i, ref in enumerate(refs):
        np.testing.assert_allclose(ref.mu.sum(), 1.0, rtol=1e-6)  # μ is a distribution
        np.testing.assert_allclose(features[i], (ref.q * ref.mu).reshape(-1), atol=1e-6, rtol=1e-6)
        # Non-trivial: exactly the entries visited in the last episode are non-zero.
        np.testing.assert_array_equal(features[i] != 0, (ref.mu != 0).reshape(-1))


def test_track_visits_does_not_change_learning(published_world):
    keys = jnp.stack([jax.random.key(4)])
    params = lanes(jnp.full((100, 4), 0.5, jnp.float32), 1)
    goals = jnp.asarray([90], jnp.int32)
    with_visits = make_sarsa(published_world, track_visits=True)
    without = make_sarsa(published_world, track_visits=False)
    a = adapt_jit(with_visits, params, goals, keys, 6)
    b = adapt_jit(without, params, goals, keys, 6)
    np.testing.assert_array_equal(a.q, b.q)
    np.testing.assert_array_equal(a.steps_log, b.steps_log)
    with pytest.raises(ValueError, match="track_visits"):
        without.feature(take(b, 0))


# --------------------------------------------------------------------------------------
# d) lanes are independent
# --------------------------------------------------------------------------------------


def test_lane_alone_equals_lane_in_batch(published_world):
    learner = make_sarsa(published_world, log_episodes=8)
    key = jax.random.key(123)
    alone = adapt_jit(learner, lanes(learner.init_params(), 1), jnp.asarray([90], jnp.int32), jnp.stack([key]), 8)
    goals = jnp.asarray([39, 48, 69, 90, 78, 99, 97], jnp.int32)
    keys = jnp.stack([jax.random.key(i) for i in range(3)] + [key] + [jax.random.key(i) for i in range(4, 7)])
    batch = adapt_jit(learner, lanes(learner.init_params(), 7), goals, keys, 8)

    def strip(agents, i):
        agent = take(agents, i)
        return agent._replace(key=jax.random.key_data(agent.key))

    chex.assert_trees_all_equal(strip(batch, 3), strip(alone, 0))
    # The other lanes really are different (different goals / keys).
    assert not np.array_equal(batch.q[0], batch.q[3])
    assert not np.array_equal(batch.steps_log[3], batch.steps_log[4])


def test_sarsa_config_validation():
    from maml2_jax.errors import ConfigError

    for bad in (dict(alpha=0.0), dict(alpha=1.5), dict(gamma=-0.1), dict(epsilon=1.1), dict(epsilon_decay=0.0)):
        with pytest.raises(ConfigError):
            SarsaConfig(**bad)
