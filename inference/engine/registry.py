"""Engines as plug-ins: an engine is one module that registers an :class:`EnginePlugin` with
its name, its ``serve`` flags, how those flags become its options, and how to build it.

Why a registry: the node (``inference/app.py``), the ``serve`` command line
(``inference/cli.py``) and the node's settings (``inference/config.py``) know nothing about
any particular engine; they ask the chosen plug-in. Adding an engine is one module that calls
:func:`register` when imported, named in :data:`MODULES` (built in) or in the
``seekwatch.engines`` entry-point group of another distribution (``name = "pkg.module"``).

Only the chosen engine's module is imported, so ``serve --engine upstream`` never loads
torch; ``serve --help`` lists the flags of the engine it would run (``--engine NAME --help``
for another's).
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from inference.config import NodeConfig
    from inference.engine.base import Engine

#: Built-in engines: name -> the module that registers it. The first one is the default.
MODULES: dict[str, str] = {
    "transformers": "inference.engine.transformers_cb",
    "upstream": "inference.engine.upstream",
}
DEFAULT = next(iter(MODULES))
ENTRY_POINT_GROUP = "seekwatch.engines"


@dataclass(frozen=True)
class EnginePlugin:
    """What the node needs to know about one engine.

    ``add_arguments(group)`` adds the engine's ``serve`` flags; ``options_from_args(args)``
    checks them (one-line :class:`contracts.config.ConfigError`) and returns the engine's own
    options object, kept in ``NodeConfig.engine_options``; ``build(options, config)`` makes
    the engine; ``model_names(options)`` are the names the node answers to by default
    (before the ``deepseek-*`` aliases); ``own_process(options)`` says whether the node runs
    the engine in a process of its own unless told otherwise (``serve --[no-]engine-process``):
    worth it for an engine whose thread competes with the HTTP side for the GIL, not for one
    that only relays.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    options_from_args: Callable[[argparse.Namespace], Any]
    build: Callable[[Any, "NodeConfig"], "Engine"]
    model_names: Callable[[Any], list[str]] = lambda options: []
    own_process: Callable[[Any], bool] = lambda options: False


_PLUGINS: dict[str, EnginePlugin] = {}


def register(plugin: EnginePlugin) -> EnginePlugin:
    """Called by an engine module at import time."""
    _PLUGINS[plugin.name] = plugin
    return plugin


def _external() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every engine ``--engine`` accepts, built-in first."""
    return list(dict.fromkeys([*MODULES, *_external(), *_PLUGINS]))


def get(name: str) -> EnginePlugin:
    """The plug-in called ``name``, importing its module on first use."""
    if name not in _PLUGINS:
        module = MODULES.get(name) or _external().get(name)
        if module is None:
            raise KeyError(f"no engine {name!r} (known: {', '.join(names())})")
        importlib.import_module(module)
        if name not in _PLUGINS:
            raise KeyError(f"{module} did not register an engine called {name!r}")
    return _PLUGINS[name]
