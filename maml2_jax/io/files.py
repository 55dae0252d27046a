"""Atomic file writes and the strict-JSON metrics log. Impure throughout."""

from __future__ import annotations

import json
import math
import os
import tempfile


def write_atomically(path: str, write) -> None:
    """Calls ``write(tmp_path)`` on a temporary file beside ``path``, then renames it over ``path``.

    A kill at any moment leaves either the old file or the new one, never half of one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, data) -> None:
    """Writes ``data`` as indented strict JSON (NaN and infinities refused), atomically."""

    def dump(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, allow_nan=False)

    write_atomically(path, dump)


def write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` atomically."""

    def dump(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    write_atomically(path, dump)


def finite(value: float):
    """``value``, or None where it is NaN or infinite (strict JSON has no such numbers)."""
    return value if math.isfinite(value) else None


class MetricsLog:
    """``metrics.jsonl``: one strict-JSON line per iteration.

    Opened on ``rows`` already done (a resumed run): the file is rewritten to hold
    exactly those, so lines written after the last checkpoint by a killed run go away.
    """

    def __init__(self, path: str, rows: list[dict]):
        self.path = path
        write_atomically(path, lambda tmp: _write_rows(tmp, rows))
        self._file = open(path, "a")

    def append(self, row: dict) -> None:
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _write_rows(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, allow_nan=False) + "\n")
