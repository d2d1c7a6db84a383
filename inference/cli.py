"""``seekwatch serve``: run the instrumented OpenAI-compatible node."""
from __future__ import annotations

import argparse
import os

from contracts.cli_types import positive_duration, positive_int
from contracts.config import ConfigError


def chosen_engine(argv) -> str:
    """The ``--engine`` value in ``argv`` (the default engine when absent or unknown: then
    the full parse reports it)."""
    from inference.engine import registry

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--engine", default=registry.DEFAULT)
    known, _ = pre.parse_known_args(list(argv or ()))
    return known.engine if known.engine in registry.names() else registry.DEFAULT


def add_parser(subparsers, name: str, help_text: str, argv=()) -> None:
    """The ``serve`` flags: the node's own, then the chosen engine's (its plug-in adds them)."""
    from inference.engine import registry

    p = subparsers.add_parser(name, help=help_text, description=help_text, allow_abbrev=False,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--served-model-name", metavar="NAME", nargs="+", action="extend", default=[],
                   help="names clients may ask for (several allowed); default: the folder name, deepseek-chat, deepseek-reasoner")
    p.add_argument("--model-version", help="model_version written into each log record (default: the folder name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--engine", choices=registry.names(), default=registry.DEFAULT,
                   help="the generation engine; `serve --engine NAME --help` lists its flags")
    # default=SUPPRESS: no "(default: None)" in --help; config_from_args reads a missing value as "as the engine prefers"
    p.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="run the engine in a process of its own, so the HTTP side never holds it up "
                        "(they share no GIL); the node talks to it over pipes. Default: as the engine prefers "
                        "(the transformers engine on a GPU: yes; on the CPU and the upstream relay: no)")
    p.add_argument("--max-batch", type=int, default=32, help="requests decoded together")
    p.add_argument("--max-queue", type=int, default=128, help="requests allowed to wait; more get 429")
    p.add_argument("--default-max-tokens", type=positive_int("a whole number of tokens"), metavar="N",
                   help="reply length limit for requests that send no max_tokens (NextChat sends none); "
                        "default: the room left in the context")
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="request bodies over this get 413")
    p.add_argument("--api-key-file", metavar="F", help="file with one API key per line; also $SEEKWATCH_API_KEYS (comma-separated)")
    p.add_argument("--auth-probes", action="store_true",
                   help="require the API key on /metrics, /healthz, /readyz and /v1/models too")
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS (TLS 1.3 only) with this certificate chain")
    p.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", metavar="ORIGIN",
                   help="allowed browser origin (repeatable; default: any)")
    p.add_argument("--log-dir", default="./var/log", help="session log folder (JSON lines)")
    p.add_argument("--log-retention-days", type=int, default=180, metavar="N",
                   help="delete local session-log files older than N days (checked at start and daily)")
    p.add_argument("--conversation-idle", type=positive_duration, default=300.0, metavar="DURATION",
                   help="a conversation has ended after this long without a chat turn (dialogue completion; "
                        "default 5m, e.g. 90s, 10m)")
    p.add_argument("--keep-alive", type=positive_duration, default=5.0, metavar="DURATION",
                   help="close a client connection idle this long (default 5s, as uvicorn and vLLM); behind a "
                        "proxy that keeps connections to the node open (nginx `keepalive`), set it above the "
                        "proxy's idle timeout, or the proxy may send a request on a connection being closed")
    p.add_argument("--cost-config", metavar="FILE", help="cost model YAML (default: contracts/defaults/cost.yaml, DeepSeek-7B on 2x T4, on-premises $1,200/month)")
    # default=SUPPRESS keeps ArgumentDefaultsHelpFormatter from printing "(default: True)",
    # which reads as "off by default"; config_from_args reads a missing value as on.
    p.add_argument("--no-instrumentation", dest="instrumentation", action="store_false", default=argparse.SUPPRESS,
                   help="turn off metrics and the session log (instrumentation is on by default; "
                        "used by the overhead benchmark)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    plugin = registry.get(chosen_engine(argv))
    plugin.add_arguments(p.add_argument_group(f"--engine {plugin.name}", plugin.help))
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):
    from inference.config import NodeConfig
    from inference.engine import registry

    engine_options = registry.get(args.engine).options_from_args(args)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path and not os.path.isfile(path):
            raise ConfigError(f"{path}: no such file")
    if args.log_retention_days < 1:
        raise ConfigError("--log-retention-days must be at least 1")
    for flag in ("max_batch", "max_queue", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    return NodeConfig(
        served_model_names=args.served_model_name, model_version=args.model_version,
        host=args.host, port=args.port, engine=args.engine, engine_options=engine_options,
        engine_process=getattr(args, "engine_process", None),
        max_batch=args.max_batch, max_queue=args.max_queue, default_max_tokens=args.default_max_tokens,
        max_body_bytes=args.max_body_bytes, api_key_file=args.api_key_file, auth_probes=args.auth_probes,
        tls_cert=args.tls_cert, tls_key=args.tls_key,
        cors_origins=args.cors_origins or ["*"], log_dir=args.log_dir, log_retention_days=args.log_retention_days,
        instrumentation=getattr(args, "instrumentation", True), cost_config=args.cost_config,
        conversation_idle_s=args.conversation_idle,
        keep_alive_s=args.keep_alive,
    )


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from inference.app import create_app

    config = config_from_args(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from inference.tls import Tls13Config

    app = create_app(config)
    scheme = "https" if config.tls_cert else "http"
    print(f"seekwatch node on {scheme}://{config.host}:{config.port} "
          f"(OpenAI base URL {scheme}://{config.host}:{config.port}/v1)", flush=True)
    server_config = Tls13Config(app, host=config.host, port=config.port, log_level=args.log_level,
                                timeout_graceful_shutdown=10, access_log=False,
                                timeout_keep_alive=config.keep_alive_s,
                                ssl_certfile=config.tls_cert, ssl_keyfile=config.tls_key)
    uvicorn.Server(server_config).run()
    return 0

