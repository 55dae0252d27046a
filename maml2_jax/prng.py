r"""JAX's Threefry-2x32 random stream, written out for tight compiled loops.

``jax.random`` on a CPU lowers every Threefry hash as a rolled five-iteration XLA
``while`` loop (it keeps compile times down for large random arrays). Inside a loop
that draws a handful of numbers per iteration — the grid world's SARSA tick draws two
words per lane — that inner loop adds a dozen separately dispatched XLA operations
per iteration to each of its five trips (the grid world's training took 7.8 s with
it, 6.3 s without, ``benchmarks/RESULTS.md``). The functions here
compute the *same bits* as ``jax.random`` with the twenty rounds unrolled into plain
element-wise integer operations, which XLA fuses into the surrounding computation.
``tests/test_prng.py`` checks them against ``jax.random`` bit for bit (they follow
its default, ``jax_threefry_partitionable=True``; with that flag off they defer to
``jax.random`` itself).

Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as
1, 2, 3", SC 2011), key ``(k0, k1)``, counter ``(x0, x1)``: with the key schedule
``k2 = k0 ⊕ k1 ⊕ 0x1BD11BDA``, after every four rounds ``s = 1 … 5`` the words get
``x0 += k[s mod 3]``, ``x1 += k[(s + 1) mod 3] + s``; a round is
``x0 += x1; x1 = rotl(x1, r) ⊕ x0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: jax.Array, r: int) -> jax.Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32 hash of counter ``(x0, x1)`` under key ``(k0, k1)``, unrolled.

    All arguments are ``uint32`` arrays of broadcastable shapes; returns the two
    output words. Equal to ``jax.random``'s ``threefry_2x32`` on every backend.
    """
    keys = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = x0 + keys[0]
    x1 = x1 + keys[1]
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, r) ^ x0
        x0 = x0 + keys[(block + 1) % 3]
        x1 = x1 + keys[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def _words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    words = jax.random.key_data(key)
    return words[0], words[1]


def fold_in_words(key: jax.Array, data: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two ``uint32`` words of ``jax.random.key_data(jax.random.fold_in(key, data))``.

    Args:
      key: a scalar typed Threefry key (``jax.random.key``).
      data: a scalar integer, taken modulo 2^32 as ``fold_in`` takes it.
    """
    k0, k1 = _words(key)
    return threefry2x32(k0, k1, jnp.uint32(0), jnp.asarray(data).astype(jnp.uint32))


def fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
    """``jax.random.fold_in(key, data)`` for a scalar typed Threefry key."""
    words = jnp.stack(fold_in_words(key, data))
    return jax.random.wrap_key_data(words, impl=jax.random.key_impl(key))


def split(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``jax.random.split(key)`` (two keys) for a scalar typed Threefry key."""
    if not jax.config.jax_threefry_partitionable:
        first, second = jax.random.split(key)
        return first, second
    k0, k1 = _words(key)
    w0, w1 = threefry2x32(k0, k1, jnp.zeros((2,), jnp.uint32), jnp.arange(2, dtype=jnp.uint32))
    keys = jax.random.wrap_key_data(jnp.stack([w0, w1], axis=-1), impl=jax.random.key_impl(key))
    return keys[0], keys[1]


def categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    """``jax.random.categorical(key, logits)`` for a scalar key and ``[K]`` float32 logits.

    The Gumbel-max draw ``argmax(−log(−log u) + logits)`` with ``u`` the uniform
    ``[tiny, 1)`` float32s that ``jax.random.uniform`` makes of the same bits.
    """
    if not jax.config.jax_threefry_partitionable:
        return jax.random.categorical(key, logits)
    k0, k1 = _words(key)
    size = logits.shape[-1]
    w0, w1 = threefry2x32(k0, k1, jnp.zeros((size,), jnp.uint32), jnp.arange(size, dtype=jnp.uint32))
    bits = w0 ^ w1
    # 23 random mantissa bits under the exponent of 1.0 give a float in [1, 2).
    one = np.array(1.0, np.float32).view(np.uint32)
    floats = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | one, jnp.float32) - jnp.float32(1.0)
    low, high = jnp.float32(jnp.finfo(jnp.float32).tiny), jnp.float32(1.0)
    uniform = jnp.maximum(low, floats * (high - low) + low)
    return jnp.argmax(-jnp.log(-jnp.log(uniform)) + logits, axis=-1)
