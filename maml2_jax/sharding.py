"""Spreading work over devices with JAX's own sharding.

Two axes are split over a 1-D :class:`jax.sharding.Mesh` of all devices:

* **runs** (the tabular experiment): every stage is independent across runs, so
  ``shard_map`` gives each device its own lanes in its own loops and no collective is
  needed (:func:`shard_runs`);
* **tasks** (the deep track's meta-batch): the meta-iteration is written for one
  device, vmapped over tasks; :func:`constrain_tasks` pins the task axis to the mesh
  and XLA's partitioner splits every per-task computation and inserts the reductions
  over tasks (the surrogate's mean, the curvature products' sum) as all-reduces.

The same code runs on one CPU, several simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``), a GPU or a TPU slice.

On a CPU host, XLA shows one device for all cores, and the lane loops of this
project are latency-bound: a single device leaves cores idle. :func:`use_host_cores`
asks XLA for one CPU device per core; call it before JAX initialises its backends
(the CLI and the benchmarks do). It changes nothing on GPU/TPU, where the
accelerator devices are used.
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from maml2_jax.errors import ConfigError

RUN_AXIS = "runs"
TASK_AXIS = "tasks"
_HOST_FLAG = "--xla_force_host_platform_device_count"


def use_host_cores(count: int | None = None) -> None:
    """Asks XLA for ``count`` CPU devices (default: one per core) unless already set.

    Impure: edits ``XLA_FLAGS`` in ``os.environ``; effective only before JAX's
    backends start (the first ``jax.devices()`` or computation).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _HOST_FLAG in flags:
        return
    count = count or os.cpu_count() or 1
    os.environ["XLA_FLAGS"] = f"{flags} {_HOST_FLAG}={count}".strip()


def run_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"runs"`` over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (RUN_AXIS,))


def task_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"tasks"`` over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (TASK_AXIS,))


def check_divisible(num_tasks: int, mesh: Mesh | None, what: str = "meta-batch size") -> None:
    """ConfigError unless ``num_tasks`` (named ``what`` in the message) splits evenly over the mesh's devices."""
    if mesh is None:
        return
    devices = mesh.devices.size
    if num_tasks % devices:
        raise ConfigError(f"{what} {num_tasks} does not divide evenly over {devices} devices; "
                          f"use a multiple of {devices}")


def constrain_tasks(tree, mesh: Mesh | None):
    """Pins the leading (task) axis of every leaf to the mesh; identity when ``mesh`` is None."""
    if mesh is None:
        return tree
    sharded = NamedSharding(mesh, PartitionSpec(TASK_AXIS))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharded), tree)


def replicated(mesh: Mesh | None):
    """A copy of every leaf on each device of ``mesh`` (None without a mesh): how the
    task-sharded step returns a run state, and so how to hand it one."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec())


def shard_runs(fn: Callable, mesh: Mesh | None, num_args: int, compiler_options: dict | None = None) -> Callable:
    """Jits ``fn`` with every argument and output split along its leading (run) axis.

    ``fn`` must treat runs independently (it sees only its device's runs). With
    ``mesh=None`` it is simply jitted. ``compiler_options`` go to XLA (``jax.jit``'s).
    """
    if mesh is not None:
        spec = PartitionSpec(RUN_AXIS)
        fn = jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * num_args, out_specs=spec, check_vma=False)
    return jax.jit(fn, compiler_options=compiler_options)


def pad_runs(tree, multiple: int):
    """Pads the leading axis of every leaf to a multiple of ``multiple`` by repeating the last run.

    The padded runs are real but redundant work; callers drop them from the outputs.
    """

    def pad(x):
        missing = -x.shape[0] % multiple
        if missing == 0:
            return x
        return jnp.concatenate([x, jnp.repeat(x[-1:], missing, axis=0)])

    return jax.tree.map(pad, tree)


def memory_stats(device) -> dict:
    """The device's memory statistics (``bytes_limit``, ``peak_bytes_in_use``, …); empty
    for a backend that reports none (CPUs)."""
    try:
        return device.memory_stats() or {}
    except (RuntimeError, NotImplementedError):
        return {}


def device_memory(devices=None) -> tuple[int, str]:
    """``(bytes, what)``: the memory of ``devices`` (default: every visible one) together;
    for CPU devices, which share it, this host's memory. Initialises JAX's backend."""
    devices = jax.devices() if devices is None else list(devices)
    limits = []
    for device in devices:
        stats = memory_stats(device)
        if not stats.get("bytes_limit"):
            break
        limits.append(int(stats["bytes_limit"]))
    else:
        return sum(limits), f"{len(devices)} {devices[0].platform} device{'s' if len(devices) > 1 else ''}"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this host's memory"
