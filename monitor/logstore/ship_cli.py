"""``seekwatch ship --logs DIR --url URL [--once]``: ship the node's JSON-lines session logs
to Elasticsearch/OpenSearch without loss or duplicates (see monitor/logstore/shipper.py)."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from contracts.config import ConfigError
from contracts.logtail import WRITER_DONE_S


def add_parser(subparsers, name: str, help_text: str) -> None:
    from contracts.logstore_args import add_connection_args

    parser = subparsers.add_parser(
        name, help=help_text, description=help_text + ". Tails every *.jsonl (and rotated *.jsonl.N) "
        "under --logs; checkpoints offsets after acknowledgement; malformed lines go to a dead-letter file.")
    parser.add_argument("--logs", required=True, metavar="DIR", help="directory of the node's *.jsonl session logs")
    add_connection_args(parser)
    parser.add_argument("--once", action="store_true", help="exit after catching up (default: keep tailing)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="checkpoints and dead-letter file (default DIR/.seekwatch-ship)")
    parser.add_argument("--batch-size", type=int, default=1000, help="documents per _bulk request (default 1000)")
    parser.add_argument("--batch-mb", type=float, default=5.0, help="max MiB per _bulk request (default 5)")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between looks for new lines (default 0.5)")
    parser.add_argument("--max-backoff", type=float, default=30.0,
                        help="longest wait between retries while the log store is down (default 30 s)")
    parser.add_argument("--torn-after", type=float, default=WRITER_DONE_S, metavar="SECONDS",
                        help="dead-letter a last line without newline once its file has been idle this "
                             "long while a newer file in the same directory was written (default 30)")
    parser.add_argument("--quiet", action="store_true", help="only warnings and the final summary")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    from contracts.logstore_args import client_from_args
    from monitor.logstore.shipper import Shipper, ShipperError

    if not os.path.isdir(args.logs):
        raise ConfigError(f"--logs: {args.logs}: no such directory")
    for flag, value in (("--batch-size", args.batch_size), ("--batch-mb", args.batch_mb),
                        ("--poll", args.poll), ("--max-backoff", args.max_backoff),
                        ("--torn-after", args.torn_after)):
        if value <= 0:
            raise ConfigError(f"{flag}: must be greater than 0")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s seekwatch ship: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    stop = threading.Event()

    def _on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with client_from_args(args) as client:
        shipper = Shipper(args.logs, client, state_dir=args.state_dir, batch_docs=args.batch_size,
                          batch_bytes=int(args.batch_mb * 1024 * 1024), poll_interval=args.poll,
                          max_backoff=args.max_backoff, stop_event=stop, torn_after=args.torn_after)
        try:
            stats = shipper.run(once=args.once)
        except ShipperError as exc:
            print(f"seekwatch ship: error: {exc}", file=sys.stderr)
            return 1
    summary = stats.as_dict()
    summary["dead_letter_file"] = str(shipper.dead_letter_path) if stats.dead_lettered else None
    partial = shipper.partial_bytes()
    if partial:
        summary["waiting_partial_bytes"] = partial
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return 0
