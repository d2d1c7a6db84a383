"""``seekwatch es-setup --url URL``: install the index template, ingest pipeline, data
streams and 180-day retention policy. Idempotent: a second run reports every object as
unchanged."""
from __future__ import annotations

import argparse
import sys

from contracts.cli_types import positive_int
from contracts.config import ConfigError


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``es-setup`` and ``ship``."""
    parser.add_argument("--url", required=True, help="engine base URL, e.g. https://es.example:9200")
    parser.add_argument("--ca-certs", metavar="FILE", help="CA bundle (PEM) to verify the engine's TLS certificate")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify TLS certificates (throwaway test clusters only)")
    parser.add_argument("--username", help="basic-auth user (or $SEEKWATCH_ES_USERNAME; password in $SEEKWATCH_ES_PASSWORD)")
    parser.add_argument("--api-key", help="Elasticsearch API key, base64 id:key (or $SEEKWATCH_ES_API_KEY)")


def add_retention_days_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--retention-days`` (default 180, at least 1), shared by ``es-setup`` and ``es-retention``."""
    parser.add_argument("--retention-days", type=positive_int("a whole number of days"), default=180,
                        help=help_text)


def client_from_args(args: argparse.Namespace):
    from monitor.logstore.adapter import StoreClient

    url = args.url
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url: {url!r} must start with http:// or https://")
    if args.ca_certs:
        import os

        if not os.path.isfile(args.ca_certs):
            raise ConfigError(f"--ca-certs: {args.ca_certs}: no such file")
    return StoreClient(url, ca_certs=args.ca_certs, verify=not args.insecure,
                       username=args.username, api_key=args.api_key)


def add_parser(subparsers, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    add_connection_args(parser)
    add_retention_days_arg(parser, "delete logs this many days old (default 180)")
    parser.add_argument("--require-retention", action="store_true",
                        help="fail (exit 2) when the engine has no ILM/ISM instead of warning")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from monitor.logstore.adapter import StoreError, StoreUnavailable
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
