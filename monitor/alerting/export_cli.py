"""``seekwatch rules export --format prometheus|alertmanager [--config FILE]``: YAML to stdout."""
from __future__ import annotations

import argparse
import sys


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = p.add_subparsers(dest="rules_command", metavar="{export}")
    sub.required = True
    e = sub.add_parser("export", help="print Prometheus rules or an Alertmanager config (YAML) for the alert matrix")
    e.add_argument("--format", "-f", required=True, choices=["prometheus", "alertmanager"],
                   help="prometheus: recording + alerting rules (rule_files); alertmanager: route, receivers, inhibition")
    e.add_argument("--config", metavar="FILE", default=None, help="alertd config (default: the built-in matrix)")
    e.add_argument("--output", "-o", metavar="FILE", default=None, help="write here instead of stdout")
    e.set_defaults(run=run_export)
    return p


def run_export(args) -> int:
    from .config import load_config
    from .export import export

    text = export(load_config(args.config), args.format)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
