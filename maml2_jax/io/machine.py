"""What a command ran on: the device, the host processor and the software stack.

XLA compiles a CPU program for the instruction set of the processor it runs on, and
the rounding of its vectorised reductions follows that instruction set. So a seed
gives the same bits again only on the same kind of machine, with the same jax and
jaxlib and the same ``XLA_FLAGS``, split over the same number of devices; on another,
the same conclusions with other bits. Every ``maml2`` output directory therefore
keeps ``machines.jsonl``: one line per session that wrote it (the start, then each
resume), so a result can be traced to what computed it and a resume on another
machine is noticed. Impure (reads ``/proc/cpuinfo`` and the environment;
:func:`session` writes).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
import warnings

FILE = "machines.jsonl"
# The fields that decide the bits of a run: a resume where one of them differs
# continues with other rounding. The host processor counts only where it computes;
# of the devices, the count the run splits its work over (``devices_used``), not how
# many are visible.
BITWISE = ("jax_platform", "device", "cpu_fingerprint", "jax", "jaxlib", "xla_flags", "devices_used")


class MachineChanged(UserWarning):
    """A run resumes on a machine that differs from its last session's in :data:`BITWISE`:
    it goes on correctly, but not bit for bit as an uninterrupted run would."""


def cpu_model() -> str:
    """The host processor's model name (``/proc/cpuinfo``; elsewhere what Python reports)."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def fingerprint() -> str:
    """A 12-digit hash of the host processor's model and instruction-set flags.

    Two hosts with the same fingerprint compile the same CPU programs.
    """
    description = [platform.machine(), platform.processor()]
    description += sorted({line for line in _cpuinfo() if line.startswith(("model name", "flags"))})
    return hashlib.sha256("\n".join(description).encode()).hexdigest()[:12]


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.readlines()
    except OSError:
        return []


def describe() -> dict:
    """This process's machine: JAX platform, device kind and count, host processor, versions.

    Starts JAX's backend (the device query) if it has not started yet.
    """
    import jax
    import jaxlib

    return {
        "jax_platform": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "cpu_model": cpu_model(),
        "cpu_fingerprint": fingerprint(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def changes(recorded: dict, current: dict) -> list[str]:
    """The :data:`BITWISE` fields in which ``current`` differs from ``recorded``.

    A field ``recorded`` lacks is not compared; the processor only where both ran
    on the CPU platform (on a GPU or TPU the host does not compute the programs).
    """
    names = [n for n in BITWISE if n in recorded and n in current]
    if not (recorded.get("jax_platform") == current.get("jax_platform") == "cpu"):
        names = [n for n in names if n != "cpu_fingerprint"]
    return [n for n in names if recorded[n] != current[n]]


def last(out: str) -> dict | None:
    """The last session recorded in ``out`` (None if the directory has no record)."""
    try:
        with open(os.path.join(out, FILE)) as f:
            lines = [line for line in f if line.strip()]
    except OSError:
        return None
    try:
        entry = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:  # a line cut short by a crash: nothing to compare with
        return None
    return entry if isinstance(entry, dict) else None


def session(out: str, resumed: bool, argv: list[str] | None = None, devices_used: int | None = None) -> dict:
    """Appends this session to ``out/machines.jsonl``: the event (``"start"``, or
    ``"resume"`` when ``resumed``), the UTC time, the command's arguments (``argv``,
    default ``sys.argv[1:]``), :func:`describe` and ``devices_used``, the count of
    devices the run splits its work over (default: every visible one). Returns the
    line written.

    Runs call it once their own files are in ``out`` (a refused start leaves no
    record). On a resume whose machine differs from the last session's (:func:`changes`)
    it warns :class:`MachineChanged` first, naming each field with both values.
    """
    previous = last(out) if resumed else None
    entry = {"event": "resume" if resumed else "start", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "argv": list(sys.argv[1:] if argv is None else argv), **describe()}
    entry["devices_used"] = entry["devices"] if devices_used is None else devices_used
    changed = changes(previous, entry) if previous is not None else []
    if changed:
        warnings.warn(f"{out} was last run with other "
                      + ", ".join(f"{name} ({previous[name]!r}, now {entry[name]!r})" for name in changed)
                      + ": the resumed run is not bit for bit what an uninterrupted run would give",
                      MachineChanged, stacklevel=2)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, FILE), "a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry
