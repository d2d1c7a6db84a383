"""``seekwatch es-setup --url URL``: install the index template, ingest pipeline, data
streams and 180-day retention policy. Idempotent: a second run reports every object as
unchanged."""
from __future__ import annotations

import argparse
import sys

from contracts.cli_types import positive_int
from contracts.logstore_args import add_connection_args, client_from_args


def add_retention_days_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--retention-days`` (default 180, at least 1), shared by ``es-setup`` and ``es-retention``."""
    parser.add_argument("--retention-days", type=positive_int("a whole number of days"), default=180,
                        help=help_text)


def add_parser(subparsers, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    add_connection_args(parser)
    add_retention_days_arg(parser, "delete logs this many days old (default 180)")
    parser.add_argument("--require-retention", action="store_true",
                        help="fail (exit 2) when the log store has no ILM/ISM instead of warning")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from contracts.logstore import StoreError, StoreUnavailable
    from monitor.logstore.setup import install

    try:
        with client_from_args(args) as client:
            report = install(client, retention_days=args.retention_days,
                             require_retention=args.require_retention)
    except (StoreUnavailable, StoreError) as exc:
        print(f"seekwatch es-setup: error: {exc}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)
    return 0
