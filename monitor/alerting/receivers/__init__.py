"""Receivers as plug-ins: every module of this package that defines a
:class:`~monitor.alerting.receivers.base.Receiver` subclass with a ``type`` is a receiver.
Adding a chat tool means adding one module here (see ``base.py`` for what it declares); the
config schema, the delivery and the Alertmanager export pick it up from :func:`registry`.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from typing import Any

from .base import COMMON_KEYS, DeliveryError, ExportContext, PermanentDeliveryError, Receiver


@lru_cache(maxsize=1)
def registry() -> dict[str, type[Receiver]]:
    """``type`` -> receiver class, for every receiver module in this package."""
    found: dict[str, type[Receiver]] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Receiver) and obj.__module__ == module.__name__
                    and obj.type != Receiver.type):
                if obj.type in found:
                    raise RuntimeError(f"two receivers of type {obj.type!r}: {found[obj.type]} and {obj}")
                found[obj.type] = obj
    return dict(sorted(found.items()))


def receiver_class(type_: str) -> type[Receiver]:
    try:
        return registry()[type_]
    except KeyError:  # the config schema rejects it first
        raise ValueError(f"unknown receiver type {type_!r}") from None


def build_receiver(cfg: dict[str, Any]) -> Receiver:
    return receiver_class(cfg["type"])(cfg)


def config_schema(common: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one ``receivers`` entry: ``common`` (the keys every receiver has,
    from alertd's config schema) plus, per type, that receiver's own keys, nothing else."""
    types = registry()
    props = dict(common.get("properties", {}))
    props["type"] = {"enum": list(types)}
    branches = []
    for t, cls in types.items():
        own = cls.config_schema
        branches.append({
            "if": {"properties": {"type": {"const": t}}, "required": ["type"]},
            "then": {"properties": {**{k: True for k in COMMON_KEYS}, **own.get("properties", {})},
                     "required": list(own.get("required", [])), "additionalProperties": False},
        })
    return {**common, "type": "object", "required": ["type"], "properties": props, "allOf": branches}


__all__ = ["DeliveryError", "ExportContext", "PermanentDeliveryError", "Receiver", "build_receiver",
           "config_schema", "receiver_class", "registry"]
