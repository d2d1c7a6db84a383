"""``seekwatch es-retention --url URL``: enforce the log retention on a log store without
ILM/ISM (roll the data streams over, delete backing indices past the retention). Run it
daily; see :mod:`monitor.logstore.retention` for the rules."""
from __future__ import annotations

import argparse
import sys

from contracts.config import ConfigError
from contracts.logstore_args import add_connection_args, client_from_args
from monitor.logstore.setup_cli import add_retention_days_arg


def add_parser(subparsers, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__.splitlines()[0].strip("`"))
    add_connection_args(parser)
    add_retention_days_arg(parser, "delete backing indices whose newest record is this many days old (default 180)")
    parser.add_argument("--rollover-hours", type=float, default=24.0,
                        help="roll a data stream over once its write index is this old (default 24)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be rolled over and deleted; change nothing")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from contracts.logstore import StoreError, StoreUnavailable
    from monitor.logstore.retention import enforce_retention

    if args.rollover_hours <= 0:
        raise ConfigError(f"--rollover-hours: {args.rollover_hours} must be positive")
    try:
        with client_from_args(args) as client:
            if client.retention_supported():
                print(f"note: this log store has {client.info().retention_api.upper()}; the policy es-setup "
                      "installed already enforces retention, so es-retention is not needed here", file=sys.stderr)
            report = enforce_retention(client, days=args.retention_days, dry_run=args.dry_run,
                                       rollover_age=timedelta(hours=args.rollover_hours))
    except (StoreUnavailable, StoreError) as exc:
        print(f"seekwatch es-retention: error: {exc}", file=sys.stderr)
        return 1
    for line in report.lines(args.dry_run):
        print(line)
    return 0
