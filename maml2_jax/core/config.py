"""The one vocabulary of MAML²'s schedule, shared by every track (grid world, deep, examples)."""

from __future__ import annotations

import dataclasses

from maml2_jax.core.outer_update import CATEGORY_INITS, OUTER_UPDATES
from maml2_jax.errors import ConfigError, check_choice, check_float, check_non_negative_int, check_positive_int

CLASSIFY_FROM = ("theta", "init")
CATEGORY_BATCHES = ("equal", "proportional")
AUTO = "auto"


def check_categories(categories, max_categories: int):
    """``categories`` as N (a positive int) or ``"auto"``; ConfigError otherwise.

    ``"auto"`` needs ``max_categories`` >= 2 (with one slot there is nothing to choose).
    """
    if categories == AUTO:
        if check_positive_int("max categories", max_categories) < 2:
            raise ConfigError(f"categories 'auto' needs max categories >= 2, got {max_categories}")
        return AUTO
    if isinstance(categories, str):
        raise ConfigError(f"categories must be a positive integer or 'auto', got {categories!r}")
    check_positive_int("max categories", max_categories)
    return check_positive_int("categories", categories)


def _field(default, help_text: str, flag: str | None = None, choices=None):
    """A dataclass field with the help text (and CLI flag) derived from it."""
    return dataclasses.field(default=default, metadata={"help": help_text, "flag": flag, "choices": choices})


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """How MAML² classifies and meta-trains (defaults: the published tabular rule).

    Attributes:
      categories: N, task categories (k-means clusters). N = 1 is MAML. ``"auto"``:
        chosen at every classification from the features
        (:func:`maml2_jax.core.classification.choose_categories`), 1 … ``max_categories``.
      max_categories: N_max, the category slots of an automatic N (ignored otherwise).
      outer_iterations: K_out, outer iterations (global moves of θ).
      inner_iterations: K_in, meta-update steps of each category per outer iteration.
      tasks_per_category: B, tasks of each category step (drawn with replacement).
      category_batch: how a step's tasks are shared between the categories. "equal":
        B each, whatever their sizes (published). "proportional": the N·B tasks of a
        step shared in proportion to the categories' pool sizes, every non-empty
        category at least one (:func:`maml2_jax.core.category_meta.batch_counts`), so
        the whole step meta-trains on as many tasks as MAML with a meta-batch of N·B
        and a large category is not starved by a small one. Shapes stay static: every
        category draws N·B tasks and weighs those past its share by 0, so a step costs
        N times the equal split's; the rule must take task weights.
      outer_update: "sequential" (published: each category starts from the θ moved by
        the previous ones) or "parallel" (all from the same θ, vmapped, then the mean).
      category_init: "global" (θ_c ← θ at every outer iteration, published) or
        "persistent" (θ_c carries on from its previous value).
      classify_every: R, outer iterations between classifications; 0 classifies once,
        before the first iteration.
      classify_from: start of the adaptations that give the features: "theta" (the
        current θ) or "init" (a fresh θ_init: learning each task from scratch, as
        published).
      stop_tolerance: a category stops early once a step moves θ_c less than this
        (0: never).
    """

    categories: int | str = _field(3, "N, task categories (k-means clusters); 1 is MAML; auto: chosen from the "
                                   "features at every classification (1 .. max categories)")
    max_categories: int = _field(4, "N_max, the largest N that categories 'auto' may choose")
    outer_iterations: int = _field(20, "K_out, outer iterations")
    inner_iterations: int = _field(10, "K_in, meta-update steps of each category per outer iteration")
    tasks_per_category: int = _field(1, "B, tasks of each category step")
    category_batch: str = _field("equal", "equal: B tasks in every category step (published); proportional: the "
                                 "N*B tasks of a step shared by category size (each category computes all N*B)",
                                 choices=CATEGORY_BATCHES)
    outer_update: str = _field("sequential", "sequential: each category starts from the θ moved by the previous "
                               "ones (published); parallel: all from the same θ, then the mean",
                               choices=OUTER_UPDATES)
    category_init: str = _field("global", "global: θ_c ← θ every outer iteration (published); persistent: θ_c "
                                "carries on", choices=CATEGORY_INITS)
    classify_every: int = _field(0, "R, outer iterations between classifications (0: once, at the start)")
    classify_from: str = _field("theta", "adapt from θ (theta) or from a fresh θ_init (init) for the features",
                                choices=CLASSIFY_FROM)
    stop_tolerance: float = _field(0.0, "a category stops once a step moves θ_c less than this (0: never)")

    def __post_init__(self):
        object.__setattr__(self, "categories", check_categories(self.categories, self.max_categories))
        for name in ("outer_iterations", "inner_iterations", "tasks_per_category"):
            check_positive_int(name.replace("_", " "), getattr(self, name))
        check_non_negative_int("classify every", self.classify_every)
        check_choice("category batch", self.category_batch, CATEGORY_BATCHES)
        check_choice("outer update", self.outer_update, OUTER_UPDATES)
        check_choice("category init", self.category_init, CATEGORY_INITS)
        check_choice("classify from", self.classify_from, CLASSIFY_FROM)
        object.__setattr__(self, "stop_tolerance", check_float("stop tolerance", self.stop_tolerance, low=0))

    @property
    def automatic(self) -> bool:
        """Whether N is chosen from the features at each classification."""
        return self.categories == AUTO

    @property
    def tasks_per_step(self) -> int:
        """Tasks each category step draws: B, or N·B (N_max·B) under the proportional split."""
        return self.tasks_per_category * (self.slots if self.category_batch == "proportional" else 1)

    @property
    def slots(self) -> int:
        """The category parameter sets a run holds: N, or N_max for an automatic N."""
        return self.max_categories if self.automatic else self.categories
