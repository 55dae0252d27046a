"""The one exception type users see for bad input."""


class ConfigError(ValueError):
    """Raised for invalid user input; its message is one line saying what is wrong.

    The CLI prints it as ``error: <message>`` and exits with status 2, so a bad option
    never produces a traceback or a partial output directory.
    """
