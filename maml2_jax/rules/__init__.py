"""Meta-update rules as pure ``(init, update)`` pairs (:class:`maml2_jax.core.types.MetaRule`)."""

from maml2_jax.rules.gradient import gradient
from maml2_jax.rules.reptile import reptile

__all__ = ["gradient", "reptile"]
