"""How every benchmark script saves its figures (beside them, ``maml2_jax.io.machine.describe()``)."""

from __future__ import annotations

import json
import os

from maml2_jax.io import files


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
