"""What every benchmark script records: the machine, and the JSON it writes."""

from __future__ import annotations

import json
import os
import platform

import jax

from maml2_jax.io import files


def machine() -> dict:
    """The device kind and count, the host and the JAX version."""
    return {
        "device": str(jax.devices()[0].device_kind),
        "devices": jax.device_count(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
    }


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
