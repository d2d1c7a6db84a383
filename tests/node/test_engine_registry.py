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


def test_where_the_engine_runs_by_default(tmp_path):
    """``--engine-process`` unset: the plug-in decides (the transformers engine on a GPU runs
    in a process of its own, on the CPU and the upstream relay in the node's); the flag and
    ``--no-engine-process`` override it either way."""
    from dataclasses import replace

    from inference.app import engine_in_own_process
    from inference.cli import config_from_args

    (tmp_path / "config.json").write_text("{}")
    cpu = config_from_args(_parse(["serve", "--model", str(tmp_path), "--device", "cpu"]))
    gpu = config_from_args(_parse(["serve", "--model", str(tmp_path), "--device", "cuda"]))
    relay = config_from_args(_parse(["serve", "--engine", "upstream", "--upstream-url", "http://127.0.0.1:9/v1"]))
    assert cpu.engine_process is None and gpu.engine_process is None
    assert [engine_in_own_process(c) for c in (cpu, gpu, relay)] == [False, True, False]
    forced = config_from_args(_parse(["serve", "--model", str(tmp_path), "--device", "cuda", "--no-engine-process"]))
    assert engine_in_own_process(forced) is False
    assert engine_in_own_process(replace(cpu, engine_process=True)) is True
    assert engine_in_own_process(replace(relay, engine_process=True)) is True
