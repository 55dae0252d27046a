"""Spreading work over devices with JAX's own sharding.

Two axes are split over a 1-D :class:`jax.sharding.Mesh` of all devices:

* **runs** (the tabular experiment's runs, the deep online setting's trials): every
  stage is independent across runs, so ``shard_map`` gives each device its own lanes
  in its own loops and no collective is needed (:func:`shard_runs`);
* **tasks** (the deep track's meta-batch): the meta-iteration is written for one
  device, vmapped over tasks; :func:`constrain_tasks` pins the task axis to the mesh
  and XLA's partitioner splits every per-task computation and inserts the reductions
  over tasks (the surrogate's mean, the curvature products' sum) as all-reduces.

The same code runs on one CPU, several simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``), a GPU or a TPU slice, and
over several processes (``jax.distributed``): :func:`join_processes` joins them, the
mesh then spans every process's devices, :func:`over_runs` and :func:`to_host` move
the runs' arrays in and out of such a mesh, and :func:`from_process_zero` shares a
host decision (k-means labels, the output-directory check) taken once.

On a CPU host, XLA shows one device for all cores, and the lane loops of this
project are latency-bound: a single device leaves cores idle. :func:`use_host_cores`
asks XLA for one CPU device per core; call it before JAX initialises its backends
(the CLI and the benchmarks do). It changes nothing on GPU/TPU, where the
accelerator devices are used.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from maml2_jax.errors import ConfigError, NonFiniteError, first_line

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


def first_devices(count: int = 0) -> list:
    """The first ``count`` visible devices (0: all of them); ConfigError for more than are visible."""
    devices = jax.devices()
    if count > len(devices):
        raise ConfigError(f"asked for {count} devices but only {len(devices)} are visible")
    return devices[:count] if count else devices


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


def split_runs(mesh: Mesh | None):
    """Every leaf's leading (run) axis split over ``mesh`` (None without a mesh): how
    :func:`shard_runs` returns its outputs, and so how to hand it inputs."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec(RUN_AXIS))


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


def over_runs(tree, mesh: Mesh | None):
    """Host arrays (the same on every process) as global arrays split along their
    leading (run) axis; unchanged in a single-process run, where jit places them.

    Across processes a computation's inputs must be global arrays, each process
    holding the rows of its own devices. A typed PRNG key array travels as its key data.
    """
    if mesh is None or jax.process_count() == 1:
        return tree
    split = split_runs(mesh)

    def place(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(place(np.asarray(jax.random.key_data(x))), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, split, lambda index: host[index])

    return jax.tree.map(place, tree)


def to_host(tree):
    """Every leaf as a NumPy array holding all of its rows, on every process (a global
    array's other processes' rows are gathered across a multi-process run)."""
    from jax.experimental import multihost_utils

    def gather(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(gather, tree)


_MESSAGE_BYTES = 1024
_ERRORS = (ConfigError, NonFiniteError)


def from_process_zero(compute: Callable, template=None):
    """``compute()`` on process 0 alone; its result on every process.

    For host decisions that every process must share: the k-means labels, the
    output-directory check. Single-process: simply ``compute()``. Across processes the
    result (a pytree of arrays shaped like ``template``) is broadcast from process 0,
    and so is its failure: a :class:`ConfigError` or :class:`NonFiniteError` of
    process 0 is raised on every process with the same one-line message (any other
    exception as a RuntimeError there), so no process is left waiting for the others.
    """
    if jax.process_count() == 1:
        return compute()
    from jax.experimental import multihost_utils

    kind, message, result, error = 0, np.zeros(_MESSAGE_BYTES, np.uint8), template, None
    if jax.process_index() == 0:
        try:
            result = compute()
        except Exception as caught:  # noqa: BLE001 -- shared below, then raised here as it was
            error = caught
            kind = next((i + 1 for i, cls in enumerate(_ERRORS) if isinstance(caught, cls)), len(_ERRORS) + 1)
            text = str(caught).encode()[:_MESSAGE_BYTES]
            message[:len(text)] = np.frombuffer(text, np.uint8)
            result = template
    kind, message, result = multihost_utils.broadcast_one_to_all((np.int32(kind), message, result))
    if error is not None:
        raise error
    if kind:
        text = bytes(np.asarray(message)).rstrip(b"\0").decode(errors="replace")
        if kind > len(_ERRORS):
            raise RuntimeError(f"process 0 failed ({text}); see its error")
        raise _ERRORS[kind - 1](text)
    return jax.tree.map(np.asarray, result)


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
    """Joins the other processes of a run (``jax.distributed.initialize``).

    Call before JAX starts; returns with its backends started and every process
    connected. The three values default to ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; with none of them JAX detects the
    cluster (SLURM, TPU pods, GKE). CPU devices of different processes exchange data
    through gloo. Impure (global JAX state, sockets). ConfigError, in one line, for an
    incomplete launch, processes launched with different counts, or processes (the
    coordinator, or the others for process 0) that do not come within ``timeout``
    seconds; the messages name the ``maml2`` flags of these values.
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
    if coordinator is not None and count > 1:
        # JAX aborts every process, with a C++ stack trace, when one of them never
        # comes: process 0 first waits for the others' roll call on its port, and they
        # for its answer, each bounded by ``timeout`` and ended by one line.
        host, port = _host_and_port(coordinator)
        if rank == 0:
            _await_roll_call(port, count, timeout)
        else:
            _answer_roll_call(host, port, rank, count, timeout)
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
    # A first collective across all processes, now: it checks that they can exchange
    # data, and it is where gloo prints its connection notice on stdout, which must
    # hold the command's results alone (a failure still raises).
    from jax.experimental import multihost_utils

    with _stdout_silenced():
        multihost_utils.sync_global_devices("maml2: processes joined")


@contextlib.contextmanager
def _stdout_silenced():
    """Points file descriptor 1 at /dev/null for the block (C++ libraries print there too)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _host_and_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--coordinator must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


# The roll call: each process k > 0 connects to the coordinator's port, sends
# (k, N) and waits for process 0's "go"; process 0 listens there until all N − 1 have
# reported, answers them and closes the port, which JAX's coordinator then binds.
_ROLL_CALL = struct.Struct("!II")
_GO = b"go"


def _await_roll_call(port: int, count: int, timeout: float) -> None:
    """Process 0: returns once processes 1..count−1 have reported; ConfigError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    peers = {}
    dual = socket.has_dualstack_ipv6()  # every interface, as JAX's coordinator binds
    try:
        server = socket.create_server(("", port), family=socket.AF_INET6 if dual else socket.AF_INET,
                                      backlog=count, dualstack_ipv6=dual)
    except OSError as error:
        raise ConfigError(f"--distributed: cannot listen on port {port} ({error.strerror}); "
                          "choose another --coordinator port") from None
    with server:
        try:
            while len(peers) < count - 1:
                server.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    peer, _ = server.accept()
                except TimeoutError:
                    missing = sorted(set(range(1, count)) - set(peers))
                    raise ConfigError(f"--distributed: {len(peers) + 1} of {count} processes joined within "
                                      f"{timeout:g} s; missing --process-id {', '.join(map(str, missing))} "
                                      "(--join-timeout sets the wait)") from None
                peer.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    rank, their_count = _ROLL_CALL.unpack(_receive(peer, _ROLL_CALL.size))
                except (OSError, ValueError):
                    peer.close()  # not one of ours, or gone: keep listening
                    continue
                if their_count != count or rank in peers or not 0 < rank < count:
                    peer.close()
                    what = (f"--num-processes {their_count} (process 0 has {count})" if their_count != count
                            else f"--process-id {rank} twice" if rank in peers else f"--process-id {rank}")
                    raise ConfigError(f"--distributed: a process joined with {what}")
                peers[rank] = peer
            for peer in peers.values():
                peer.sendall(_GO)
        finally:
            for peer in peers.values():
                peer.close()


def _answer_roll_call(host: str, port: int, rank: int, count: int, timeout: float) -> None:
    """Process ``rank`` > 0: reports to process 0 and returns on its "go"; ConfigError
    when it does not answer within ``timeout`` s (or gives up on the others)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection = socket.create_connection((host, port), timeout=1.0)
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise ConfigError(f"--distributed: no coordinator answered at {host}:{port} within {timeout:g} s "
                                  "(is process 0 running? --join-timeout sets the wait)") from None
            time.sleep(0.25)
    with connection:
        # Process 0 may wait up to its own timeout for the last process; allow it that.
        connection.settimeout(max(deadline - time.monotonic(), 0.0) + timeout)
        try:
            connection.sendall(_ROLL_CALL.pack(rank, count))
            answer = _receive(connection, len(_GO))
        except (OSError, ValueError):
            answer = b""
    if answer != _GO:
        raise ConfigError(f"--distributed: process 0 at {host}:{port} did not let process {rank} join "
                          "(see its error: not all processes came, or the launch flags differ)")


def _receive(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ValueError("connection closed")
        data += chunk
    return data


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--distributed: ${name} must be an integer, got {value!r}") from None
