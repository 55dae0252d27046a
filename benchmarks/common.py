"""What every benchmark script records: the machine, and the JSON it writes."""

from __future__ import annotations

import json
import os
import platform

import jax

from maml2_jax.io import files


def machine() -> dict:
    """The device kind and count, the host's processor model, the host and the JAX version.

    The processor model is recorded because timings, and a CPU run's float rounding,
    depend on it; the VMs these figures come from have changed model between sittings.
    """
    return {
        "device": str(jax.devices()[0].device_kind),
        "devices": jax.device_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
    }


def cpu_model() -> str:
    """The host processor's model name (``/proc/cpuinfo``; elsewhere what Python reports)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save(result: dict, path: str, quiet: bool = False) -> None:
    """Writes ``result`` as JSON to ``path`` (folders created; replaced whole, so a run
    stopped mid-write leaves the previous file) and says so unless ``quiet``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)

    files.write_atomically(path, write)
    if not quiet:
        print(f"wrote {path}")
