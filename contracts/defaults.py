"""Paths of the default config files that ship with seekwatch (data, not code)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def default_config_path(name: str) -> Path:
    """Path of ``defaults/<name>.yaml`` (``"alerts"`` or ``"cost"``)."""
    return Path(str(resources.files(__package__).joinpath("defaults", f"{name}.yaml")))
