r"""The Gaussian MLP policy of the deep track (DESIGN §1.2).

.. math::
   π_θ(a \mid o) = \mathcal{N}\big(a;\ μ_θ(o),\ \mathrm{diag}(σ^2)\big),
   \qquad σ = \exp(\log σ)

``μ_θ`` is an MLP (64×64 tanh by default, linear output) and ``log σ`` a learned,
state-independent vector. The policy is an ``(init, apply)``-style bundle of pure
functions over a parameter pytree ``{"mlp": ..., "log_std": [A]}``, so adaptation can
differentiate through it and meta-learning can treat it like any other pytree.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from maml2_jax.errors import ConfigError, check_choice, check_float, check_positive_int

_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}
# Weight initialisers of the hidden and output layers (biases start at zero).
_WEIGHT_INITS = {"lecun_normal": nn.initializers.lecun_normal(), "xavier_uniform": nn.initializers.xavier_uniform()}


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Architecture of the Gaussian MLP policy.

    Attributes:
      hidden_sizes: widths of the hidden layers.
      activation: "tanh" or "relu".
      init_std: initial σ of every action dimension.
      min_std: σ is floored here (keeps log-probabilities finite as σ shrinks).
      weight_init: "lecun_normal" (Flax's default) or "xavier_uniform" (the PyTorch
        MAML-RL reference's).
    """

    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    init_std: float = 1.0
    min_std: float = 1e-6
    weight_init: str = "lecun_normal"

    def __post_init__(self):
        sizes = self.hidden_sizes
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
            raise ConfigError(f"hidden_sizes must be a sequence of layer widths, got {sizes!r}")
        object.__setattr__(self, "hidden_sizes", tuple(check_positive_int("hidden layer width", w) for w in sizes))
        check_choice("activation", self.activation, tuple(_ACTIVATIONS))
        check_choice("weight_init", self.weight_init, tuple(_WEIGHT_INITS))
        for name in ("init_std", "min_std"):
            object.__setattr__(self, name, check_float(name, getattr(self, name), low=0, low_open=True))
        if not self.init_std > self.min_std:
            raise ConfigError(f"need init_std > min_std > 0, got {self.init_std} and {self.min_std}")


def _columnwise_dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``lhs [..., E] @ rhs [E, A]`` as A matrix-vector products, one per output column.

    The same product as one matmul, up to float rounding. Why: the output layer has
    few columns (the action size), and the weight gradient XLA's CPU backend emits for
    ``hᵀ g`` with a narrow ``g`` ([rows, 64]ᵀ × [rows, 2], batched over tasks) measured
    3.2 ms against 0.36 ms for the per-column form; every TRPO curvature product
    differentiates that gradient.
    """
    del dimension_numbers  # flax Dense: contract lhs's last axis with rhs's first
    column = lambda j: jax.lax.dot(lhs, rhs[:, j], precision=precision,  # noqa: E731
                                   preferred_element_type=preferred_element_type)
    return jnp.stack([column(j) for j in range(rhs.shape[1])], axis=-1)


class _Mean(nn.Module):
    hidden_sizes: Sequence[int]
    activation: Callable
    action_dim: int
    kernel_init: Callable

    @nn.compact
    def __call__(self, obs):
        x = obs
        for width in self.hidden_sizes:
            x = self.activation(nn.Dense(width, kernel_init=self.kernel_init)(x))
        return nn.Dense(self.action_dim, kernel_init=self.kernel_init, dot_general=_columnwise_dot)(x)


class GaussianPolicy(NamedTuple):
    """Pure functions of the policy. ``obs`` may carry any leading batch axes.

    Attributes:
      init: ``key -> params``.
      mean_and_log_std: ``(params, obs [..., D]) -> (μ [..., A], log σ [A])``.
      sample: ``(params, obs [D], key) -> (action [A], log π(action))``.
      log_prob: ``(params, obs [..., D], action [..., A]) -> [...]``.
      kl: ``(params_p, params_q, obs [..., D]) -> [...]``, KL(π_p ‖ π_q) per observation.
      entropy: ``params -> scalar`` (state-independent).
    """

    init: Callable
    mean_and_log_std: Callable
    sample: Callable
    log_prob: Callable
    kl: Callable
    entropy: Callable


def gaussian_log_prob(action, mean, log_std):
    """``log N(action; mean, diag(exp(log_std)²))`` summed over the last axis."""
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * jnp.square(z) - log_std - 0.5 * math.log(2.0 * math.pi), axis=-1)


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q):
    r"""KL(p ‖ q) of diagonal Gaussians, summed over the last axis:
    :math:`\log σ_q − \log σ_p + (σ_p² + (μ_p − μ_q)²) / (2σ_q²) − 1/2`."""
    var_ratio = jnp.exp(2.0 * (log_std_p - log_std_q))
    mean_term = jnp.square(mean_p - mean_q) * jnp.exp(-2.0 * log_std_q)
    return jnp.sum(log_std_q - log_std_p + 0.5 * (var_ratio + mean_term) - 0.5, axis=-1)


def make_gaussian_policy(obs_dim: int, action_dim: int, config: PolicyConfig = PolicyConfig()) -> GaussianPolicy:
    """Builds the policy for observations of size ``obs_dim`` and actions of ``action_dim``."""
    check_positive_int("observation size", obs_dim)
    check_positive_int("action size", action_dim)
    module = _Mean(config.hidden_sizes, _ACTIVATIONS[config.activation], action_dim, _WEIGHT_INITS[config.weight_init])
    min_log_std = math.log(config.min_std)

    def init(key):
        mlp = module.init(key, jnp.zeros((obs_dim,), jnp.float32))["params"]
        return {"mlp": mlp, "log_std": jnp.full((action_dim,), math.log(config.init_std), jnp.float32)}

    def mean_and_log_std(params, obs):
        # One 2-D matmul per layer: XLA's CPU dots on [..., D] inputs with several
        # leading axes measured ~1.9x slower than on the same rows flattened.
        flat = obs.reshape((-1, obs.shape[-1]))
        mean = module.apply({"params": params["mlp"]}, flat).reshape(obs.shape[:-1] + (action_dim,))
        return mean, jnp.maximum(params["log_std"], min_log_std)

    def sample(params, obs, key):
        mean, log_std = mean_and_log_std(params, obs)
        action = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
        return action, gaussian_log_prob(action, mean, log_std)

    def log_prob(params, obs, action):
        mean, log_std = mean_and_log_std(params, obs)
        return gaussian_log_prob(action, mean, log_std)

    def kl(params_p, params_q, obs):
        mean_p, log_std_p = mean_and_log_std(params_p, obs)
        mean_q, log_std_q = mean_and_log_std(params_q, obs)
        return gaussian_kl(mean_p, log_std_p, mean_q, log_std_q)

    def entropy(params):
        log_std = jnp.maximum(params["log_std"], min_log_std)
        return jnp.sum(log_std + 0.5 * math.log(2.0 * math.pi * math.e))

    return GaussianPolicy(init, mean_and_log_std, sample, log_prob, kl, entropy)
