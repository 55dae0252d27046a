"""The one exception type users see for bad input."""


class ConfigError(ValueError):
    """Raised for invalid user input; its message is one line saying what is wrong.

    The CLI prints it as ``error: <message>`` and exits with status 2, so a bad option
    never produces a traceback or a partial output directory.
    """


def check_positive_int(name: str, value) -> None:
    """Raises ConfigError unless ``value`` is an int >= 1 (bools are refused too)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
