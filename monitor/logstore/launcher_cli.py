"""``seekwatch search-engine start [--port N] [--data DIR]``: run the bundled single-node
OpenSearch in the foreground for the local stack; prints its URL; Ctrl-C / SIGTERM stop it
cleanly."""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from contracts.config import ConfigError


def add_parser(subparsers, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    start = actions.add_parser("start", help="start the log store in the foreground and print its URL",
                               description="Start a single-node OpenSearch 2.19 (search-engine/) in "
                               "the foreground. Ctrl-C or SIGTERM stops it cleanly.")
    start.add_argument("--port", type=int, default=9200, help="HTTP port on 127.0.0.1 (default 9200; 0 = any free port)")
    start.add_argument("--data", default="var/search-engine", help="directory for the node's data and logs (default var/search-engine)")
    start.add_argument("--heap", default="512m", help="JVM heap, e.g. 512m or 1g (default 512m)")
    start.add_argument("--setup", action="store_true", help="also install the template, pipeline and retention (es-setup) once it is up")
    start.set_defaults(run=run_start)


def run_start(args: argparse.Namespace) -> int:
    from monitor.logstore.launcher import LaunchError, LogStoreServer

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: {args.port} is not a TCP port")
    store = LogStoreServer(args.data, port=args.port, heap=args.heap)
    try:
        url = store.start()
    except LaunchError as exc:
        print(f"seekwatch search-engine: error: {exc}", file=sys.stderr)
        return 1
    print(f"log store listening on {url} (data in {store.data_dir}; Ctrl-C to stop)", flush=True)
    if args.setup:
        from contracts.logstore import StoreClient
        from monitor.logstore.setup import install

        with StoreClient(url) as client:
            for line in install(client).lines():
                print(line, flush=True)
    stop = threading.Event()

    def _on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        while not stop.wait(1.0):
            if store.proc is None or store.proc.poll() is not None:
                print(f"seekwatch search-engine: the log store exited; log:\n{store.tail_log()}", file=sys.stderr)
                return 1
    finally:
        store.stop()
    print("log store stopped", flush=True)
    return 0
