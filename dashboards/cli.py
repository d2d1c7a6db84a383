"""``seekwatch dashboard``: run the Streamlit ops dashboard (``streamlit run dashboards/app.py``).

Imports nothing heavy: the process execs ``python -m streamlit run`` (on POSIX; a child process
elsewhere), configured through environment variables that ``dashboards.ui`` reads, so stopping
``seekwatch dashboard`` stops the server. Flags after ``--`` go to ``streamlit run`` unchanged.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from contracts.cli_types import positive_duration
from contracts.logstore_args import add_tls_auth_args, check_connection_args
from dashboards import auth

APP = Path(__file__).with_name("app.py")


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


def _port(value: str) -> int:
    try:
        p = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 < p < 65536:
        raise argparse.ArgumentTypeError(f"{p} is not a port number (1-65535)")
    return p


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=help_text + ". Flags after -- go to `streamlit run`.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--logs", metavar="DIR", help="session-log directory (JSON lines; default: ./var/log, the node's default)")
    src.add_argument("--url", metavar="LOG_STORE_URL", type=_url,
                     help="Elasticsearch/OpenSearch URL: read through server-side aggregations")
    p.add_argument("--index", default="seekwatch-*", help="index pattern on the log store (default: seekwatch-*)")
    add_tls_auth_args(p)  # with --url: --ca-certs, --insecure, --username, --api-key, as es-setup takes them
    p.add_argument("--host-name", metavar="NAME", help="with --url: only records whose host.name is NAME (one node)")
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument("--prometheus", metavar="URL", type=_url, help="Prometheus server for GPU series (query_range)")
    gpu.add_argument("--node", metavar="URL", type=_url, help="a node whose /metrics to scrape for GPU series")
    p.add_argument("--alerts-db", metavar="PATH", help="alertd's SQLite state file (firing alerts and history)")
    p.add_argument("--cost-config", metavar="PATH", help="cost model YAML (default: contracts/defaults/cost.yaml, DeepSeek-7B on 2x T4, on-premises $1,200/month)")
    p.add_argument("--alerts-config", metavar="PATH",
                   help="alertd config whose thresholds mark the cards and charts (default: the built-in matrix)")
    p.add_argument("--conversation-idle", type=positive_duration, metavar="DURATION",
                   help="a conversation has ended after this long without a chat turn; the nodes' "
                        "--conversation-idle (default 5m)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="with --logs: where parsed rows of settled log files are kept for fast restarts "
                        "(default ~/.cache/seekwatch/dashboard; 'off' disables)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8501, help="port to listen on (default: 8501)")
    auth.add_arguments(p)  # --auth-config / --insecure-no-auth (dashboards/auth.py)
    p.add_argument("--now", metavar="ISO_TIME", help=argparse.SUPPRESS)  # pin "now" (screenshots, tests)
    p.add_argument("streamlit_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(run=run)
    return p


def build_env(args: argparse.Namespace, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for key in [k for k in env if k.startswith("SEEKWATCH_DASHBOARD_")]:
        del env[key]
    pairs = {"LOGS": os.path.abspath(args.logs) if args.logs else None, "URL": args.url, "INDEX": args.index,
             "PROMETHEUS": args.prometheus, "NODE": args.node,
             "ALERTS_DB": os.path.abspath(args.alerts_db) if args.alerts_db else None, "NOW": args.now,
             "HOST_NAME": args.host_name,
             "ALERTS_CONFIG": os.path.abspath(args.alerts_config) if args.alerts_config else None,
             "CONVERSATION_IDLE": f"{args.conversation_idle:g}" if args.conversation_idle else None,
             "CA_CERTS": os.path.abspath(args.ca_certs) if args.ca_certs else None,
             "INSECURE": "1" if args.insecure else None,
             "CACHE": (args.cache_dir if args.cache_dir == "off" else os.path.abspath(args.cache_dir)) if args.cache_dir else None}
    env.update({f"SEEKWATCH_DASHBOARD_{k}": v for k, v in pairs.items() if v})
    env.update(auth.env_for(args))
    if args.username:  # the store client reads these (the password only ever from the environment)
        env["SEEKWATCH_ES_USERNAME"] = args.username
    if args.api_key:
        env["SEEKWATCH_ES_API_KEY"] = args.api_key
    if args.cost_config:
        env["SEEKWATCH_COST_CONFIG"] = os.path.abspath(args.cost_config)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def command(args: argparse.Namespace) -> list[str]:
    extra = [a for a in (args.streamlit_args or []) if a != "--"]
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", args.host,
            "--server.port", str(args.port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer", *extra]


def run(args: argparse.Namespace) -> int:
    from contracts.config import ConfigError

    if auth.wants_hash_password(args):  # `seekwatch dashboard hash-password`
        return auth.hash_password_cli()
    if args.cost_config:  # a bad cost file: one line, exit 2, before starting anything
        from contracts.cost import CostModel

        CostModel.load(args.cost_config)
    if args.url:
        check_connection_args(args.url, args.ca_certs)
    elif args.ca_certs or args.insecure or args.username or args.api_key:
        raise ConfigError("--ca-certs, --insecure, --username and --api-key go with --url")
    if args.logs and not Path(args.logs).is_dir():
        raise ConfigError(f"--logs {args.logs}: no such directory")
    if args.alerts_db and not Path(args.alerts_db).exists():
        print(f"seekwatch dashboard: warning: --alerts-db {args.alerts_db} does not exist yet", file=sys.stderr)
    if args.now:
        import datetime as dt

        try:
            dt.datetime.fromisoformat(args.now.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"--now {args.now!r}: not an ISO time") from None
    auth.check_args(args)  # a login is configured, or waived out loud
    print(f"seekwatch dashboard: http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    cmd, env = command(args), build_env(args)
    if os.name == "posix":
        # become the Streamlit server: whoever stops `seekwatch dashboard` (a terminal, systemd,
        # a test, `seekwatch demo`) signals the server itself, and no orphan is left behind
        sys.stdout.flush()
        os.execve(cmd[0], cmd, env)
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(10)
        return 130
