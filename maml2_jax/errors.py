"""The one exception type users see for bad input, and the small checks that raise it.

Every check names the field in its message (``"beta must be ..., got nan"``), so the
CLI's one line says what to change. Numbers are refused as soon as they are invalid for
the arrays they end up in: parameters and tables are float32 and counters int32.
"""

from __future__ import annotations

import math
import operator

FLOAT32_MAX = 3.4028234663852886e38
INT32_MAX = 2**31 - 1
# jax.random.key(seed) keeps the low 32 bits of the seed (without jax_enable_x64):
# key(2**32) is key(0). It raises OverflowError outside [-2**63, 2**63).
SEED_LIMIT = 2**32


class ConfigError(ValueError):
    """Raised for invalid user input; its message is one line saying what is wrong.

    The CLI prints it as ``error: <message>`` and exits with status 2, so a bad option
    never produces a traceback or a partial output directory.
    """


def first_line(error: BaseException, limit: int = 120) -> str:
    """The first line of ``error``'s message (its type's name when empty), cut at ``limit``
    characters: what a one-line ``ConfigError`` quotes of a dependency's exception."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int; ConfigError unless it is an integer (not a bool) in ``[low, high]``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)  # ints and NumPy integers; never floats or strings
    except TypeError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            wanted = f"an integer in [{low}, {high}]"
        elif high is not None:
            wanted = f"an integer <= {high}"
        else:
            wanted = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
        raise ConfigError(f"{name} must be {wanted}, got {value!r}")
    return value


def check_positive_int(name: str, value) -> int:
    """Raises ConfigError unless ``value`` is an int >= 1 (bools are refused too)."""
    return check_int(name, value, low=1)


def check_non_negative_int(name: str, value) -> int:
    """Raises ConfigError unless ``value`` is an int >= 0 (bools are refused too)."""
    return check_int(name, value, low=0)


def check_float(name: str, value, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float; ConfigError unless it is a real number, finite as a float32,
    within the bounds (``low_open``/``high_open``: the bound itself is excluded).

    NaN fails every comparison, so it is refused by the finiteness test, not by luck.
    """
    if isinstance(value, (bool, str, bytes)) or not hasattr(value, "__float__"):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        if low is not None and high is not None:
            wanted = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif high is not None:
            wanted = f"{'<' if high_open else '<='} {high}"
        elif low == 0:
            wanted = "positive" if low_open else "non-negative"
        else:
            wanted = f"{'>' if low_open else '>='} {low}"
        raise ConfigError(f"{name} must be {wanted}, got {value!r}")
    return value


def check_choice(name: str, value, choices) -> str:
    """Raises ConfigError unless ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_seed(name: str, value, count: int = 1, limit: int = SEED_LIMIT) -> int:
    """``value`` as an int; ConfigError unless ``value .. value + count - 1`` are all in
    ``[0, limit)``: seeds a JAX key tells apart (its low 32 bits), none repeating another."""
    value = check_int(name, value)
    if count > limit:
        raise ConfigError(f"{count} seeds are more than the {limit} distinct values a {name} takes")
    if not 0 <= value or value + count > limit:
        span = "" if count == 1 else f" for {count} seeds"
        raise ConfigError(f"{name} must be an integer in [0, {limit - count + 1}){span}, got {value!r}")
    return value


def check_path(name: str, value) -> str:
    """Raises ConfigError unless ``value`` is a non-empty path string."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty path, got {value!r}")
    if "\x00" in value:
        raise ConfigError(f"{name} must not contain a NUL character, got {value!r}")
    return value


class NonFiniteError(RuntimeError):
    """Raised when training produced a NaN or an infinity (a loss, gradient or parameter).

    The message is one line naming the quantity and the outer iteration; the run
    stops before the bad values reach a parameter file, a metrics line or a checkpoint.
    The CLI prints it as ``maml2: error: <message>`` and exits with status 1.
    """
