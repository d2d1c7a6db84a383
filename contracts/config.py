"""Configuration as data: YAML files checked against a JSON Schema, with one-line errors.

Every part (alertd, the cost model, the refusal detector, the node) loads its YAML through
:func:`load_yaml_config`, so a bad file always reads the same way to the user —
``<file>: <where>: <what>`` — and the CLI turns :class:`ConfigError` into exit status 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


class ConfigError(Exception):
    """A config file (or flag) is unusable; the message is one line a user can act on."""


def _where(path: Sequence[Any]) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def check_against_schema(data: Any, schema: Mapping[str, Any], source: str) -> None:
    """Raise :class:`ConfigError` naming the first schema violation in ``data``."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        raise ConfigError(f"{source}: {_where(err.absolute_path)}: {err.message}")


def load_yaml_config(path: str | Path, schema: Mapping[str, Any] | None = None) -> Any:
    """Read a YAML file, check it against ``schema``, and return the parsed data."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    try:
        # Config files need no anchors or aliases; refusing them up front stops an alias
        # bomb (a few hundred bytes that expand to gigabytes) before anything is built.
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise ConfigError(f"{p}: line {mark.line + 1}: YAML aliases (*name) are not allowed in config files")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML: {where}{problem}") from None
    if schema is not None:
        check_against_schema(data, schema, str(p))
    return data

