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
import socket
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from maml2_jax.errors import ConfigError, first_line

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


def join_processes(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
                   timeout: int = 60) -> None:
    """Joins the other processes of a run (``jax.distributed.initialize``), before JAX starts.

    The three values default to ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``; with none of them JAX detects the cluster (SLURM, TPU pods,
    GKE). CPU devices of different processes exchange data through gloo. Impure
    (global JAX state). ConfigError, in one line, for an incomplete launch or a
    coordinator that does not answer within ``timeout`` seconds; the messages name the
    ``maml2 train`` flags of these values.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    count = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    rank = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    given = [v is not None for v in (coordinator, count, rank)]
    if any(given) and not all(given):
        missing = [flag for flag, v in zip(("--coordinator", "--num-processes", "--process-id"), given) if not v]
        raise ConfigError(f"--distributed: {', '.join(missing)} missing (or its JAX_* variable); give all three, "
                          "or none under SLURM or on a TPU pod")
    if count is not None and (count < 1 or not 0 <= rank < count):
        raise ConfigError(f"--distributed: need 0 <= --process-id < --num-processes, got {rank} of {count}")
    if timeout < 1:
        raise ConfigError(f"--join-timeout must be at least 1 second, got {timeout}")
    if coordinator is not None:
        host, port = _host_and_port(coordinator)
        if rank != 0:
            # JAX aborts the process, with a C++ stack trace, when the coordinator never
            # answers; wait for it here instead, and say so in one line.
            _wait_for_coordinator(host, port, timeout)
    # CPU devices of different processes talk through gloo (XLA's default CPU client
    # has no cross-process collectives); GPUs and TPUs are not affected.
    collectives = jax.config.jax_cpu_collectives_implementation
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, count, rank, initialization_timeout=timeout)
    except (ValueError, RuntimeError) as error:
        jax.config.update("jax_cpu_collectives_implementation", collectives)
        where = f"the coordinator {coordinator} within {timeout} s" if coordinator else "the cluster"
        raise ConfigError(f"--distributed: cannot reach {where} ({first_line(error, 120)}); pass --coordinator, "
                          "--num-processes and --process-id, or launch under SLURM or on a TPU pod") from None


def _host_and_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--coordinator must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _wait_for_coordinator(host: str, port: int, timeout: float) -> None:
    """Returns once ``host:port`` accepts a TCP connection; ConfigError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise ConfigError(f"--distributed: no coordinator answered at {host}:{port} within {timeout:g} s "
                                  "(is process 0 running? --join-timeout sets the wait)") from None
            time.sleep(0.25)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--distributed: ${name} must be an integer, got {value!r}") from None
