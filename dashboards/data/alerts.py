"""Alerts for the Alerts page and the Overview banner, from alertd's state.

alertd owns its SQLite schema (``monitor/alerting/state.py`` documents ``alerts`` — one row
per pending/firing alert — and ``events`` — the history — as stable for the dashboard). The
file is that interface: the dashboard never imports the monitor (the layering rule,
docs/architecture.md). It is opened **read-only** and read defensively: tables whose names
mention alert/firing/state/history/event are listed as they are, and a row counts as firing
when a ``state``/``status`` column says ``firing``.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd


def _labels(v: Any) -> dict:
    import json

    try:
        d = json.loads(v) if isinstance(v, str) else (v or {})
        return d if isinstance(d, dict) else {}
    except ValueError:
        return {}


def read_alerts(path: str | None, history_limit: int = 500) -> dict[str, Any]:
    """``{"firing": DataFrame, "history": DataFrame, "how": str, "error": str | None}``."""
    empty = pd.DataFrame()
    if not path:
        return {"firing": empty, "history": empty, "how": "no alertd state file configured (--alerts-db)", "error": None}
    if not Path(path).exists():
        return {"firing": empty, "history": empty, "how": f"{path}", "error": f"{path}: no such file"}
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as exc:
        return {"firing": empty, "history": empty, "how": path, "error": str(exc)}
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        firing, history = [], []
        for t in tables:
            low = t.lower()
            if not any(k in low for k in ("alert", "firing", "state", "history", "event", "notif")):
                continue
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{t}")')]
            order = next((c for c in cols if c.lower() in ("id", "t", "updated_at", "ts", "time", "timestamp", "at", "started_at",
                                                             "starts_at", "fired_at", "created_at", "rowid")), "rowid")
            df = pd.read_sql_query(f'SELECT * FROM "{t}" ORDER BY "{order}" DESC LIMIT {int(history_limit)}', con)
            df.insert(0, "table", t)
            if "labels" in df.columns:
                labels = df["labels"].map(_labels)
                df.insert(1, "alert", [lb.get("alertname") or lb.get("rule") or k for lb, k in
                                       zip(labels, df.get("key", pd.Series([""] * len(df))))])
            for c in df.columns:
                if c in ("t", "active_at", "fired_at", "updated_at", "last_notified_at", "starts_at", "ends_at") \
                        and pd.api.types.is_numeric_dtype(df[c]):
                    df[c] = pd.to_datetime(df[c], unit="s", utc=True)
            state_col = next((c for c in cols if c.lower() in ("state", "status")), None)
            if state_col is not None and ("hist" not in low and "event" not in low):
                firing.append(df[df[state_col].astype(str).str.lower() == "firing"])
            else:
                history.append(df)
        f = pd.concat(firing, ignore_index=True) if firing else empty
        h = pd.concat(history, ignore_index=True) if history else empty
        return {"firing": f, "history": h, "how": f"read-only SQLite, {path} (alertd's documented tables)", "error": None}
    except sqlite3.Error as exc:
        return {"firing": empty, "history": empty, "how": path, "error": str(exc)}
    finally:
        con.close()
