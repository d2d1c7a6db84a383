"""``seekwatch alertd``: run the alerting daemon, check its config, manage silences.

    seekwatch alertd [--config FILE] [--once]          run (Ctrl-C / SIGTERM stops cleanly)
    seekwatch alertd --check-config [--config FILE]    validate and print a summary
    seekwatch alertd [--config FILE] silence add --rule p99_latency --node 10.0.0.5:8000 --duration 2h
    seekwatch alertd silence list | silence expire ID
    seekwatch alertd status                            pending/firing alerts and the outbox

Nothing heavy is imported until a command runs.
"""
from __future__ import annotations

import argparse
import sys


def _add_config(p: argparse.ArgumentParser, top: bool) -> None:
    p.add_argument("--config", metavar="FILE", default=None if top else argparse.SUPPRESS,
                   help="alertd YAML config (default: the built-in threshold matrix; schema in docs/alerts.md)")


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=help_text + ". Config schema: docs/alerts.md.")
    _add_config(p, True)
    p.add_argument("--check-config", nargs="?", const="", default=None, metavar="FILE",
                   help="validate the config (FILE or --config), print a summary and exit (2 if invalid)")
    p.add_argument("--once", action="store_true", help="run one evaluation, deliver what is due, exit")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(run=run)
    sub = p.add_subparsers(dest="alertd_command", metavar="{silence,status}")
    sub.required = False

    s = sub.add_parser("silence", help="add, list or expire silences (stored in the state file)")
    _add_config(s, False)
    ss = s.add_subparsers(dest="silence_command", metavar="{add,list,expire}")
    ss.required = True
    a = ss.add_parser("add", help="silence matching alerts until the silence expires")
    _add_config(a, False)
    a.add_argument("--rule", help="rule name, e.g. p99_latency (glob allowed)")
    a.add_argument("--node", help="node host:port (glob allowed, e.g. '10.0.0.*')")
    a.add_argument("--gpu", help="GPU index")
    a.add_argument("--matcher", "-m", action="append", default=[], metavar="LABEL=GLOB",
                   help="any label matcher (repeatable): rule, node, gpu, severity, direction")
    a.add_argument("--duration", "-d", required=True, help="how long, e.g. 30m, 2h, 1d")
    a.add_argument("--comment", "-c", default="", help="why (shown in `silence list`)")
    a.add_argument("--author", default="", help="who")
    a.set_defaults(run=run_silence_add)
    ls = ss.add_parser("list", help="list active silences")
    _add_config(ls, False)
    ls.add_argument("--all", action="store_true", help="include expired silences")
    ls.set_defaults(run=run_silence_list)
    e = ss.add_parser("expire", help="end a silence now")
    _add_config(e, False)
    e.add_argument("id", type=int)
    e.set_defaults(run=run_silence_expire)

    st = sub.add_parser("status", help="show pending/firing alerts and the notification outbox")
    _add_config(st, False)
    st.set_defaults(run=run_status)
    return p


def _config(args):
    from .config import load_config

    return load_config(getattr(args, "config", None))


def run(args) -> int:
    if args.check_config is not None:
        from .config import load_config

        path = args.check_config or args.config
        cfg = load_config(path)
        print(f"{cfg.source}: ok — {cfg.summary()}")
        return 0
    import logging
    import signal
    import threading

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = _config(args)
    from .daemon import Alertd

    d = Alertd(cfg)
    if cfg.metrics_listen:
        from prometheus_client import start_http_server

        host, port = cfg.metrics_listen.rsplit(":", 1)
        start_http_server(int(port), addr=host, registry=d.metrics.registry)
    bridge = None
    if cfg.alertmanager_listen and not args.once:
        from .bridge import AlertmanagerBridge

        bridge = AlertmanagerBridge(cfg.alertmanager_listen, cfg.state_path, cfg.receivers, cfg.dashboard_url,
                                    wake=d.deliverer.wake).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        d.run(stop, once=args.once)
    finally:
        if bridge is not None:
            bridge.stop()
        d.close()
    return 0


def _store(args):
    from .state import StateStore

    return StateStore(_config(args).state_path)


def run_silence_add(args) -> int:
    from contracts.config import ConfigError

    from .durations import parse_duration

    matchers: dict[str, str] = {}
    for k in ("rule", "node", "gpu"):
        if getattr(args, k):
            matchers[k] = getattr(args, k)
    for m in args.matcher:
        k, sep, v = m.partition("=")
        if not sep or not k:
            raise ConfigError(f"--matcher {m!r}: expected LABEL=GLOB")
        matchers[k.strip()] = v.strip()
    if not matchers:
        raise ConfigError("silence add: give at least one of --rule, --node, --gpu, --matcher")
    try:
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        raise ConfigError(f"--duration: {exc}") from None
    if seconds <= 0:
        raise ConfigError("--duration: must be greater than zero")
    store = _store(args)
    sid = store.add_silence(matchers, seconds, comment=args.comment, created_by=args.author)
    s = next(x for x in store.silences(include_expired=True) if x["id"] == sid)
    from .messages import ts

    print(f"silence {sid} added: {matchers} until {ts(s['ends_at'])}")
    return 0


def run_silence_list(args) -> int:
    from .messages import ts

    store = _store(args)
    rows = store.silences(include_expired=args.all)
    if not rows:
        print("no silences")
    for s in rows:
        print(f"{s['id']:>4}  {ts(s['starts_at'])} → {ts(s['ends_at'])}  {s['matchers']}  {s['comment'] or ''}".rstrip())
    return 0


def run_silence_expire(args) -> int:
    store = _store(args)
    if not store.expire_silence(args.id):
        print(f"seekwatch alertd: error: no active silence {args.id}", file=sys.stderr)
        return 1
    print(f"silence {args.id} expired")
    return 0


def run_status(args) -> int:
    from .messages import ts

    store = _store(args)
    alerts = store.alerts()
    if not alerts:
        print("no pending or firing alerts")
    for a in alerts:
        print(f"{a['state']:<8} {a['key']:<50} value={a['value']} threshold={a['threshold']} since {ts(a['active_at'])}")
    counts: dict[str, int] = {}
    for r in store.outbox():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print("outbox: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "empty"))
    return 0
