"""The ``seekwatch`` command line: parses arguments, then calls each part's own entry point.

Every part registers its subcommand through a ``add_parser(subparsers)`` function in its own
package (``add_parser(subparsers, name, help, argv=...)`` when its flags depend on other flags,
as ``serve``'s depend on ``--engine``), and runs through the ``run(args)`` function it sets as
the parser's default. The imports are lazy so that ``seekwatch alertd --help`` never imports
torch.

Bad flags and bad config files give one clear line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from typing import Callable, NoReturn, Sequence

from contracts.config import ConfigError

#: subcommand -> (module holding ``add_parser``, one-line help). Order is the help order.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("inference.cli", "run the instrumented OpenAI-compatible inference node"),
    "make-tiny-model": ("inference.tiny_model", "write a random-weight DeepSeek-architecture model and tokenizer"),
    "loadgen": ("seekwatch.loadgen", "drive a node with realistic multi-turn chat sessions"),
    "demo": ("seekwatch.demo", "run the whole stack locally on a tiny model (the embedded default)"),
    "alertd": ("monitor.alerting.cli", "evaluate the threshold matrix and send chat-ops webhooks"),
    "rules": ("monitor.alerting.export_cli", "export the alert matrix as Prometheus/Alertmanager rules"),
    "dashboard": ("dashboards.cli", "run the Streamlit ops dashboard"),
    "ship": ("monitor.logstore.ship_cli", "ship session logs to Elasticsearch/OpenSearch, losslessly"),
    "es-setup": ("monitor.logstore.setup_cli", "install index template, ingest pipeline and retention"),
    "es-retention": ("monitor.logstore.retention_cli", "enforce log retention where the log store has no ILM/ISM"),
    "search-engine": ("monitor.logstore.launcher_cli", "run a local single-node OpenSearch for the local stack"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; users asked for one clear line and exit 2."""

    def error(self, message: str) -> NoReturn:  # noqa: D401 - argparse hook
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(argv: Sequence[str] = ()) -> OneLineParser:
    """The parser for ``argv``: only the chosen subcommand's module is imported, so one
    part's missing dependency (or a half-finished edit) never breaks the others, and
    ``seekwatch alertd --help`` stays free of torch."""
    parser = OneLineParser(prog="seekwatch", description="Monitoring stack for a self-hosted DeepSeek chat service used through NextChat.")
    from seekwatch import __version__

    parser.add_argument("--version", action="version", version=f"seekwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name == chosen:
            add_parser = importlib.import_module(module_name).add_parser
            if "argv" in inspect.signature(add_parser).parameters:  # flags that depend on other flags (serve --engine)
                add_parser(sub, name, help_text, argv=argv)
            else:
                add_parser(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text)  # listed in --help; parsed only when chosen
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int | None] = args.run
    try:
        return int(run(args) or 0)
    except ConfigError as exc:
        print(f"seekwatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
