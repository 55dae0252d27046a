"""The unrolled Threefry stream (maml2_jax.prng) gives jax.random's bits exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maml2_jax import prng

KEYS = jax.random.split(jax.random.key(20261202), 2000)


def _data(seed, n=2000):
    # int32 counters across the whole range, negatives included (fold_in takes them mod 2^32).
    return jnp.asarray(np.random.default_rng(seed).integers(-2**31, 2**31 - 1, n), jnp.int32)


def test_fold_in_matches_jax_random():
    data = _data(0)
    expected = jax.vmap(lambda k, d: jax.random.key_data(jax.random.fold_in(k, d)))(KEYS, data)
    words = jax.jit(jax.vmap(prng.fold_in_words))(KEYS, data)
    keys = jax.jit(jax.vmap(prng.fold_in))(KEYS, data)
    np.testing.assert_array_equal(np.stack(words, axis=-1), expected)
    np.testing.assert_array_equal(jax.random.key_data(keys), expected)


def test_split_matches_jax_random():
    expected = jax.vmap(lambda k: jax.random.key_data(jax.random.split(k)))(KEYS)
    got = jax.jit(jax.vmap(lambda k: jax.random.key_data(jnp.stack(prng.split(k)))))(KEYS)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", ["masked", "gaussian"])
def test_categorical_matches_jax_random(kind):
    rng = np.random.default_rng(1)
    if kind == "masked":  # the lane machine's draw: uniform over a category's members
        logits = np.where(rng.random((len(KEYS), 10)) < 0.5, 0.0, -np.inf)
        logits[:, 3] = 0.0  # every row has a member
    else:
        logits = rng.normal(size=(len(KEYS), 10))
    logits = jnp.asarray(logits, jnp.float32)
    expected = jax.vmap(jax.random.categorical)(KEYS, logits)
    got = jax.jit(jax.vmap(prng.categorical))(KEYS, logits)
    np.testing.assert_array_equal(got, expected)
    if kind == "masked":  # a draw that ignored the mask would be caught here
        assert bool(jnp.all(jnp.isfinite(jnp.take_along_axis(logits, got[:, None], axis=1))))


def test_without_partitionable_threefry_defers_to_jax_random():
    with jax.threefry_partitionable(False):
        expected = jax.vmap(lambda k: jax.random.key_data(jax.random.split(k)))(KEYS[:50])
        got = jax.vmap(lambda k: jax.random.key_data(jnp.stack(prng.split(k))))(KEYS[:50])
        logits = jnp.zeros((50, 7), jnp.float32)
        draws = jax.vmap(prng.categorical)(KEYS[:50], logits)
        expected_draws = jax.vmap(jax.random.categorical)(KEYS[:50], logits)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(draws, expected_draws)


@pytest.mark.parametrize("seed", [0, 12345, 2**31 + 5, 2**32 - 1])
def test_grid_run_keys_hashed_on_the_host_match_jax_random(seed):
    from maml2_jax.gridworld_experiment import run_keys

    master = jax.random.key(seed)
    expected = jax.vmap(lambda r: jax.random.split(jax.random.fold_in(master, r), 5))(jnp.arange(7))
    np.testing.assert_array_equal(jax.random.key_data(run_keys(seed, 7)), jax.random.key_data(expected))
