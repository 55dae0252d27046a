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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would honour the umask
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_UMASK: list[int] = []


def _umask() -> int:
    """The process umask, read once (reading it means setting it, so not per file)."""
    if not _UMASK:
        mask = os.umask(0o022)
        os.umask(mask)
        _UMASK.append(mask)
    return _UMASK[0]


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


def claim_directory(out: str, outputs: tuple[str, ...], overwrite: bool) -> None:
    """Checks that ``out`` can take a new run and empties it of an earlier one (the caller creates it).

    ``outputs``: ``fnmatch`` patterns of every entry the command writes. A directory
    holding only such entries (and half-written ``.tmp-*`` files) holds an earlier
    run: refused unless ``overwrite``, then those entries are removed so nothing stale
    is left beside the new run. A directory holding anything else is refused even
    with ``overwrite``: this never deletes what the library did not write.
    """
    import fnmatch
    import shutil

    from maml2_jax.errors import ConfigError

    if not out:
        raise ConfigError("--out: empty path")
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--out: {out} exists and is not a directory")
    entries = sorted(os.listdir(path)) if os.path.isdir(path) else []
    foreign = [e for e in entries if not e.startswith(".tmp-") and not any(fnmatch.fnmatch(e, p) for p in outputs)]
    if foreign:
        raise ConfigError(f"--out: {out} is not empty and not an earlier run of this command (it holds "
                          f"{foreign[0]!r}); choose a new directory")
    if entries and not overwrite:
        raise ConfigError(f"--out: {out} holds an earlier run; pass --overwrite to replace it "
                          "(or --resume to continue it)")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"--out: {out} cannot be created: {probe} is not a directory")
    try:  # a real write, not os.access: read-only mounts and root both answer truthfully
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise ConfigError(f"--out: {out} is not writable ({error.strerror})") from None
    for entry in entries:
        target = os.path.join(path, entry)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        else:
            os.remove(target)
