"""Checkpoints of a run's state with orbax-checkpoint.

A checkpoint is the whole :class:`~maml2_jax.core.types.RunState` (or any pytree of
arrays) plus a small JSON record, saved under ``DIR/<iteration>/``. orbax writes each
one into a temporary directory and renames it when complete, so a process killed
mid-write leaves the previous checkpoint as the latest usable one; the unfinished
directory is ignored and cleaned up by the next save.

Impure throughout (file I/O).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from maml2_jax.errors import ConfigError, first_line


def _stored_leaves(state) -> dict:
    """The leaves orbax stores, by position: every non-empty array (orbax refuses empty
    ones; those, such as a fresh-draw source's empty pool, come back from the template)."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]
    return {str(i): x for i, x in enumerate(leaves) if x.size}


class Checkpoints:
    """The checkpoints of one run, in ``directory`` (created if missing).

    Args:
      directory: where the numbered checkpoints live.
      keep: how many of the newest to keep (older ones are deleted after a save).
    """

    def __init__(self, directory: str, keep: int = 2):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, iteration: int, state, record: dict | None = None) -> None:
        """Saves ``state`` (a pytree of arrays) and ``record`` (JSON) as checkpoint ``iteration``."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(_stored_leaves(state)),
                                  record=ocp.args.JsonSave(record or {}))
        self._manager.save(iteration, args=args, force=True)
        self._manager.wait_until_finished()

    def latest(self) -> int | None:
        """The newest complete checkpoint's iteration, or None."""
        self._manager.reload()
        return self._manager.latest_step()

    def restore(self, template, iteration: int | None = None):
        """``(state, record)`` of checkpoint ``iteration`` (default: the newest).

        ``template``: a state of the same structure and shapes (e.g. a fresh
        ``init``); its leaves' dtypes and shapes are checked against the saved ones.
        Raises ConfigError, one line, for a missing or damaged checkpoint.
        """
        iteration = self.latest() if iteration is None else iteration
        if iteration is None:
            raise ConfigError(f"no complete checkpoint in {self.directory}")
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), _stored_leaves(template))
        try:
            restored = self._manager.restore(iteration, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
        except Exception as error:  # orbax raises many types for a damaged directory
            raise ConfigError(f"checkpoint {iteration} in {self.directory} cannot be read "
                              f"({first_line(error, 200)})") from None
        stored = restored.state
        leaves, treedef = jax.tree.flatten(template)
        if set(stored) != set(_stored_leaves(template)):
            raise ConfigError(f"checkpoint {iteration} in {self.directory} does not match this run's state")
        for name, got in stored.items():
            want = leaves[int(name)]
            if np.shape(got) != np.shape(want) or np.asarray(got).dtype != np.asarray(want).dtype:
                raise ConfigError(f"checkpoint {iteration} in {self.directory} does not match this run's state "
                                  f"(an array of shape {np.shape(got)} where {np.shape(want)} was expected)")
            leaves[int(name)] = np.asarray(got)
        return jax.tree.unflatten(treedef, leaves), dict(restored.record or {})

    def close(self) -> None:
        self._manager.close()
