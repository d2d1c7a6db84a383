"""The log store's connection flags, shared by every command that talks to it (``es-setup``,
``es-retention``, ``ship``, ``dashboard --url``): the same TLS and auth options everywhere,
checked the same way. Imports nothing heavy (the client, and httpx with it, only when one is
built), so ``--help`` stays cheap.
"""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from contracts.logstore import StoreClient


def add_tls_auth_args(parser: argparse.ArgumentParser) -> None:
    """TLS and auth flags for a store connection (``es-setup``, ``es-retention``, ``ship``,
    ``dashboard --url``)."""
    parser.add_argument("--ca-certs", metavar="FILE", help="CA bundle (PEM) to verify the log store's TLS certificate")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify TLS certificates (throwaway test clusters only)")
    parser.add_argument("--username", help="basic-auth user (or $SEEKWATCH_ES_USERNAME; password in $SEEKWATCH_ES_PASSWORD)")
    parser.add_argument("--api-key", help="Elasticsearch API key, base64 id:key (or $SEEKWATCH_ES_API_KEY)")


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """``--url`` (required) and the TLS and auth flags: ``es-setup``, ``es-retention``, ``ship``."""
    parser.add_argument("--url", required=True, help="log store base URL, e.g. https://es.example:9200")
    add_tls_auth_args(parser)


def check_connection_args(url: str, ca_certs: str | None) -> None:
    """One-line :class:`~contracts.config.ConfigError` for a URL without a scheme or a
    missing CA file, before anything connects."""
    from contracts.config import ConfigError

    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url: {url!r} must start with http:// or https://")
    if ca_certs and not os.path.isfile(ca_certs):
        raise ConfigError(f"--ca-certs: {ca_certs}: no such file")


def client_from_args(args: argparse.Namespace) -> "StoreClient":
    from contracts.logstore import StoreClient

    check_connection_args(args.url, args.ca_certs)
    return StoreClient(args.url, ca_certs=args.ca_certs, verify=not args.insecure,
                       username=args.username, api_key=args.api_key)
