"""Engines are plug-ins: the ``serve`` flags, checks and construction of an engine come from
the module that registers it; only the chosen engine's module is imported."""
from __future__ import annotations

import subprocess
import sys

import pytest

from inference.engine import registry


def _parse(argv):
    from seekwatch.cli import build_parser

    return build_parser(argv).parse_args(argv)


def test_built_in_engines_register_themselves():
    assert registry.names()[:2] == ["transformers", "upstream"]
    for name in ("transformers", "upstream"):
        assert registry.get(name).name == name
    with pytest.raises(KeyError, match="no engine 'nope'"):
        registry.get("nope")


def test_serve_takes_the_chosen_engines_flags(tmp_path):
    from inference.cli import config_from_args
    from inference.engine.upstream import UpstreamOptions

    args = _parse(["serve", "--engine", "upstream", "--upstream-url", "http://127.0.0.1:9/v1",
                   "--upstream-model", "deepseek-chat"])
    config = config_from_args(args)
    assert config.engine_options == UpstreamOptions(url="http://127.0.0.1:9/v1", model="deepseek-chat")
    assert config.model_names()[0] == "deepseek-chat"
    with pytest.raises(SystemExit):  # another engine's flag is not a serve flag for this one
        _parse(["serve", "--engine", "upstream", "--upstream-url", "http://x/v1", "--model", str(tmp_path)])


def test_an_upstream_node_never_imports_torch():
    code = ("import sys\nfrom seekwatch.cli import build_parser\nfrom inference.cli import config_from_args\n"
            "from inference.app import build_engine\n"
            "argv = ['serve', '--engine', 'upstream', '--upstream-url', 'http://127.0.0.1:9/v1']\n"
            "engine = build_engine(config_from_args(build_parser(argv).parse_args(argv)))\n"
            "print(type(engine).__name__, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["UpstreamEngine", "False"]


def test_help_lists_the_chosen_engines_flags():
    out = subprocess.run([sys.executable, "-m", "seekwatch", "serve", "--engine", "upstream", "--help"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "--engine upstream:" in out and "--upstream-url" in out and "--model DIR" not in out
    assert "--max-batch" in out  # the node's own flags are there for every engine
