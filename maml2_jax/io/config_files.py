"""Config files: a frozen config dataclass from YAML or JSON, with command-line overrides.

A file holds a (possibly partial) nested mapping with the dataclass's field names,
the shape ``dataclasses.asdict`` gives, so the ``config.json`` a run saves can be
passed back to rerun it. Impure (reads files).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

from maml2_jax.errors import ConfigError, first_line


def read(path: str) -> dict:
    """The mapping in ``path`` (``.yaml``/``.yml`` as YAML, anything else as JSON)."""
    if not path:
        raise ConfigError("--config: empty path")
    try:
        with open(path) as f:
            text = f.read()
    except OSError as error:
        raise ConfigError(f"--config: cannot read {path} ({error.strerror})") from None
    try:
        if os.path.splitext(path)[1].lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:  # yaml and json each raise their own error types
        raise ConfigError(f"--config: {path} is not valid {'YAML' if path.endswith(('yaml', 'yml')) else 'JSON'} "
                          f"({first_line(error)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def build(default, data: dict, overrides: dict[str, object] | None = None):
    """``default`` with the settings of ``data``, then ``overrides`` (``{"a.b": value}``), applied.

    Unknown names are refused (one line naming them); lists become tuples, as the
    dataclasses hold them; the dataclasses' own validation runs on the result.
    """
    merged = dataclasses.asdict(default)
    _merge(merged, data, "")
    for dotted, value in (overrides or {}).items():
        node = merged
        *parents, name = dotted.split(".")
        for parent in parents:
            node = node[parent]
        node[name] = value
    return _construct(type(default), default, merged, "")


def _merge(into: dict, data: dict, prefix: str) -> None:
    for name, value in data.items():
        where = f"{prefix}{name}"
        if name not in into:
            raise ConfigError(f"--config: unknown setting {where!r}")
        if isinstance(into[name], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"--config: {where!r} must be a mapping of settings")
            _merge(into[name], value, where + ".")
        else:
            into[name] = copy.deepcopy(value)


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _construct(cls, default, data: dict, prefix: str):
    fields = {}
    for field in dataclasses.fields(cls):
        value, current = data[field.name], getattr(default, field.name)
        if dataclasses.is_dataclass(current):
            value = _construct(type(current), current, value, f"{prefix}{field.name}.")
        elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # YAML and JSON write 1.0 as 1
        else:
            value = _tuples(value)
        fields[field.name] = value
    try:
        return cls(**fields)
    except TypeError as error:  # a value of a type the dataclass's checks did not foresee
        raise ConfigError(f"--config: bad value in {prefix or 'the settings'} ({error})") from None


def same_settings(saved: dict, config) -> bool:
    """Whether ``saved`` (a run's ``config.json``) holds the settings of ``config``, the
    check before a resume. A field ``saved`` lacks was added by a later version of the
    library and counts at its default, the behaviour the earlier version had, so a run
    started before an upgrade resumes after it."""
    try:
        return build(type(config)(), saved) == config
    except ConfigError:
        return False
