"""What every benchmark script records: the machine, and the JSON it writes."""

from __future__ import annotations

import json
import os

from maml2_jax.io import files
from maml2_jax.io import machine as machine_lib


def machine() -> dict:
    """What the figures were measured on (:func:`maml2_jax.io.machine.describe`).

    The processor model is among it because timings, and a CPU run's float rounding,
    depend on it; the VMs these figures come from have changed model between sittings.
    """
    return machine_lib.describe()


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
