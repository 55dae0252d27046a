"""JAX's persistent compilation cache for the ``maml2`` command.

Compiling a command's programs takes seconds (3 s for the grid-world experiment on a
2-core CPU, more for the deep track) and is the same work on every run of the same
settings. With the cache on, XLA's executables are written to disk on the first run
and read back on later ones.

Where: ``$MAML2_COMPILE_CACHE`` if set (``off`` turns the cache off), else
``~/.cache/maml2_jax/xla/<machine>``, where ``<machine>`` is a hash of the
processor's name and feature flags: a CPU executable uses the instructions of the
machine that compiled it, so a home directory shared across different machines
must not share the folder. A cache directory already given to JAX
(``JAX_COMPILATION_CACHE_DIR``) is left as it is, and so is a minimum compile time
set in ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` (otherwise
:data:`MIN_COMPILE_SECONDS`).
"""

from __future__ import annotations

import os

from maml2_jax.io import machine

ENV = "MAML2_COMPILE_CACHE"
# Programs that compile faster than this are not worth a disk round trip.
MIN_COMPILE_SECONDS = 0.25
MIN_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def default_directory() -> str | None:
    """The cache folder the environment asks for (None: off)."""
    chosen = os.environ.get(ENV, "").strip()
    if chosen.lower() == "off":
        return None
    if chosen:
        return os.path.expanduser(chosen)
    return os.path.join(os.path.expanduser("~"), ".cache", "maml2_jax", "xla", machine.fingerprint())


def enable(directory: str | None = None) -> str | None:
    """Turns the persistent cache on in ``directory`` (default :func:`default_directory`).

    Impure: sets JAX's configuration for the process. Returns the folder in use, or
    None when the cache is off. A folder that cannot be created leaves it off.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    directory = default_directory() if directory is None else directory
    if directory is None:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    if MIN_TIME_ENV not in os.environ:  # JAX has read it already
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return directory
