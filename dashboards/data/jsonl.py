"""Local JSON-lines session logs (the embedded default source): parsed with pyarrow, kept in
pandas, read incrementally.

- Every ``*.jsonl`` file (and rotated ``*.jsonl.N``) under the log directory is tracked by
  inode, with the byte offset read so far: a refresh parses only the bytes appended since,
  and a file renamed by rotation is not read twice.
- Only whole lines are parsed. A last line without its newline is left for the next refresh
  (the writer may be mid-line); a line that does not parse — a crash's partial line followed
  by later writes, garbage — is set aside and counted (:meth:`JsonlSource.health`).
- Only the numeric and key fields are held in memory; prompt/response text stays on disk and
  is read back by byte offset when the Sessions page opens a conversation or searches text.
- Records are de-duplicated by ``request_id`` / ``feedback_id`` (a copy-truncate rotation may
  show the same lines twice).
"""
from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contracts.log_schema import FEEDBACK_DATASET, SESSION_DATASET

from .base import TURN_COLUMNS, Window
from .frame import FrameAnalytics

CHUNK_BYTES = 16 << 20
_NUMERIC = {"turn_index": "int64", "latency_ms": "float64", "ttft_ms": "float64",
            "input_tokens": "int64", "output_tokens": "int64", "cost_usd": "float64"}


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([
        ("@timestamp", pa.timestamp("ms", tz="UTC")),
        ("event", pa.struct([("dataset", pa.string())])),
        ("session_id", pa.string()),
        ("request_id", pa.string()),
        ("model_version", pa.string()),
        ("status", pa.string()),
        ("turn_index", pa.int64()),
        ("latency_ms", pa.float64()),
        ("ttft_ms", pa.float64()),
        ("cost_usd", pa.float64()),
        ("gen_ai", pa.struct([("usage", pa.struct([("input_tokens", pa.int64()), ("output_tokens", pa.int64())]))])),
        ("rating", pa.string()),
        ("feedback_id", pa.string()),
    ])


_FLAT = {"@timestamp": "time", "event.dataset": "dataset", "gen_ai.usage.input_tokens": "input_tokens",
         "gen_ai.usage.output_tokens": "output_tokens"}


def _flatten_record(rec: dict) -> dict | None:
    """The per-line fallback: pick the same fields as the arrow schema out of one record."""
    if not isinstance(rec, dict):
        return None
    ev = rec.get("event") if isinstance(rec.get("event"), dict) else {}
    usage = ((rec.get("gen_ai") or {}).get("usage") or {}) if isinstance(rec.get("gen_ai"), dict) else {}
    try:
        t = pd.Timestamp(rec.get("@timestamp"))
        t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    except (ValueError, TypeError):
        return None
    return {"time": t, "dataset": ev.get("dataset"), "session_id": rec.get("session_id"),
            "request_id": rec.get("request_id"), "model_version": rec.get("model_version"),
            "status": rec.get("status"), "turn_index": rec.get("turn_index"), "latency_ms": rec.get("latency_ms"),
            "ttft_ms": rec.get("ttft_ms"), "cost_usd": rec.get("cost_usd"),
            "input_tokens": usage.get("input_tokens"), "output_tokens": usage.get("output_tokens"),
            "rating": rec.get("rating"), "feedback_id": rec.get("feedback_id")}


@dataclass
class _File:
    fid: int
    path: Path
    offset: int = 0  # bytes consumed (always at a line boundary)
    pending: int = 0  # bytes after the last newline, not yet parsed


@dataclass
class ParseStats:
    lines: int = 0
    set_aside: int = 0
    samples: list[str] = field(default_factory=list)


class JsonlSource(FrameAnalytics):
    name = "jsonl"

    def __init__(self, log_dir: str | os.PathLike[str]):
        self.log_dir = Path(log_dir)
        self._lock = threading.RLock()
        self._files: dict[tuple[int, int], _File] = {}
        self._paths: dict[int, Path] = {}
        self._turns = self._empty_turns()
        self._feedback = pd.DataFrame({"time": pd.Series([], dtype="datetime64[ms, UTC]"),
                                       "request_id": pd.Series([], dtype=object),
                                       "session_id": pd.Series([], dtype=object),
                                       "rating": pd.Series([], dtype=object)})
        self.stats = ParseStats()
        self.refreshes = 0

    @staticmethod
    def _empty_turns() -> pd.DataFrame:
        cols: dict[str, Any] = {"time": pd.Series([], dtype="datetime64[ms, UTC]")}
        for c in ("session_id", "request_id", "model_version", "status"):
            cols[c] = pd.Series([], dtype=object)
        for c, t in _NUMERIC.items():
            cols[c] = pd.Series([], dtype=t)
        cols["_file"] = pd.Series([], dtype="int32")
        cols["_off"] = pd.Series([], dtype="int64")
        return pd.DataFrame(cols)

    def describe(self) -> str:
        return f"JSON lines: {self.log_dir}"

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return self._turns, self._feedback

    # ------------------------------------------------------------------ reading
    def _log_files(self) -> list[Path]:
        if not self.log_dir.is_dir():
            return []
        out = [p for p in self.log_dir.rglob("*") if p.is_file() and (p.name.endswith(".jsonl") or ".jsonl." in p.name)
               and not p.name.endswith((".gz", ".zst", ".tmp"))]
        return sorted(out, key=lambda p: (p.stat().st_mtime, p.name))

    def refresh(self) -> bool:
        """Parse whatever was appended since the last call. Returns True when data changed."""
        with self._lock:
            self.refreshes += 1
            new_turns: list[pd.DataFrame] = []
            new_fb: list[pd.DataFrame] = []
            for p in self._log_files():
                try:
                    st = p.stat()
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                f = self._files.get(key)
                if f is None:
                    f = self._files[key] = _File(len(self._paths), p)
                    self._paths[f.fid] = p
                f.path = self._paths[f.fid] = p
                if st.st_size < f.offset:  # truncated in place (copytruncate): start again
                    f.offset = 0
                if st.st_size - f.offset <= f.pending and f.pending:
                    continue
                if st.st_size == f.offset:
                    continue
                t, fb = self._read_file(f, st.st_size)
                new_turns += t
                new_fb += fb
            if not new_turns and not new_fb:
                return False
            if new_turns:
                add = pd.concat(new_turns, ignore_index=True)
                turns = pd.concat([self._turns, add], ignore_index=True) if len(self._turns) else add
                if not turns["time"].is_monotonic_increasing:
                    turns = turns.sort_values("time", kind="stable", ignore_index=True)
                if not turns["request_id"].is_unique:
                    turns = turns.drop_duplicates("request_id", keep="last", ignore_index=True)
                self._turns = turns
            if new_fb:
                fb = pd.concat([self._feedback, *new_fb], ignore_index=True) if len(self._feedback) else pd.concat(new_fb, ignore_index=True)
                fb = fb.drop_duplicates("feedback_id", keep="last", ignore_index=True) if "feedback_id" in fb else fb
                self._feedback = fb
            return True

    def _read_file(self, f: _File, size: int) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
        turns: list[pd.DataFrame] = []
        fbs: list[pd.DataFrame] = []
        with open(f.path, "rb") as fh:
            fh.seek(f.offset)
            pos = f.offset
            while pos < size:
                buf = fh.read(min(CHUNK_BYTES, size - pos))
                if not buf:
                    break
                cut = buf.rfind(b"\n")
                if cut < 0:
                    if pos + len(buf) >= size:  # no newline till EOF: a line still being written
                        f.pending = len(buf)
                        break
                    # a single line longer than a chunk: read on to its end
                    more = fh.readline()
                    buf += more
                    cut = buf.rfind(b"\n")
                    if cut < 0:
                        f.pending = len(buf)
                        break
                block = buf[: cut + 1]
                fh.seek(pos + cut + 1)
                t, fb = self._parse_block(block, f.fid, pos)
                turns += t
                fbs += fb
                pos += cut + 1
                f.offset = pos
                f.pending = 0
        return turns, fbs

    def _parse_block(self, block: bytes, fid: int, base: int) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
        import pyarrow as pa
        import pyarrow.json as pj

        arr = np.frombuffer(block, dtype=np.uint8)
        ends = np.flatnonzero(arr == 10)
        starts = np.concatenate(([0], ends[:-1] + 1))
        nonblank = (ends - starts) > 0
        # lines of only whitespace are skipped by both parsers
        if not nonblank.all():
            blank_ws = [i for i in np.flatnonzero(nonblank) if not block[starts[i]:ends[i]].strip()]
            nonblank[blank_ws] = False
        offsets = starts[nonblank] + base
        try:
            table = pj.read_json(io.BytesIO(block), read_options=pj.ReadOptions(block_size=1 << 22, use_threads=True),
                                 parse_options=pj.ParseOptions(explicit_schema=_arrow_schema(),
                                                               unexpected_field_behavior="ignore"))
            if table.num_rows != len(offsets):
                raise pa.ArrowInvalid("row count does not match the line count")
            flat = table
            while any(pa.types.is_struct(f.type) for f in flat.schema):
                flat = flat.flatten()
            flat = flat.rename_columns([_FLAT.get(n, n) for n in flat.column_names])
            df = flat.to_pandas()
            df["_off"] = offsets
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            df = self._parse_lines(block, starts[nonblank], ends[nonblank], base)
        self.stats.lines += int(len(offsets))
        df["_file"] = np.int32(fid)
        is_fb = df["dataset"] == FEEDBACK_DATASET
        is_turn = (df["dataset"] == SESSION_DATASET) | (df["dataset"].isna() & df["request_id"].notna() & df["rating"].isna())
        is_turn &= df["time"].notna() & df["session_id"].notna()
        bad = ~(is_fb | is_turn)
        if bad.any():
            self.stats.set_aside += int(bad.sum())
        turns = df.loc[is_turn, ["time", "session_id", "request_id", "model_version", "status", *_NUMERIC, "_file", "_off"]]
        turns = turns.astype({"turn_index": "float64"}).fillna({"turn_index": 0, "input_tokens": 0, "output_tokens": 0,
                                                               "cost_usd": 0.0, "latency_ms": 0.0})
        turns = turns.astype({k: v for k, v in _NUMERIC.items() if k != "ttft_ms"} | {"ttft_ms": "float64"})
        turns = turns.astype({c: object for c in ("session_id", "request_id", "model_version", "status")})
        fb = df.loc[is_fb & df["rating"].isin(["up", "down"]), ["time", "request_id", "session_id", "rating", "feedback_id"]]
        return [turns] if len(turns) else [], [fb.astype(object).astype({"time": "datetime64[ms, UTC]"})] if len(fb) else []

    def _parse_lines(self, block: bytes, starts, ends, base: int) -> pd.DataFrame:
        rows, offs = [], []
        for s, e in zip(starts, ends):
            line = block[s:e]
            try:
                rec = _flatten_record(json.loads(line))
            except (ValueError, UnicodeDecodeError):
                rec = None
            if rec is None:
                self.stats.set_aside += 1
                if len(self.stats.samples) < 5:
                    self.stats.samples.append(line[:120].decode("utf-8", "replace"))
                continue
            rows.append(rec)
            offs.append(base + int(s))
        df = pd.DataFrame(rows, columns=["time", "dataset", "session_id", "request_id", "model_version", "status",
                                         "turn_index", "latency_ms", "ttft_ms", "cost_usd", "input_tokens",
                                         "output_tokens", "rating", "feedback_id"])
        df["time"] = pd.to_datetime(df["time"], utc=True).astype("datetime64[ms, UTC]")
        for c in _NUMERIC:
            df[c] = pd.to_numeric(df[c], errors="coerce")
        df["_off"] = np.asarray(offs, dtype="int64")
        return df

    # ------------------------------------------------------------------ text, read back from disk
    def _texts(self, rows: pd.DataFrame) -> pd.DataFrame:
        prompts, responses = [], []
        handles: dict[int, Any] = {}
        try:
            for fid, off in zip(rows["_file"].to_numpy(), rows["_off"].to_numpy()):
                fh = handles.get(int(fid))
                if fh is None:
                    try:
                        fh = handles[int(fid)] = open(self._paths[int(fid)], "rb")
                    except OSError:
                        prompts.append(None), responses.append(None)
                        continue
                fh.seek(int(off))
                try:
                    rec = json.loads(fh.readline())
                except ValueError:
                    rec = {}
                prompts.append(rec.get("prompt"))
                responses.append(rec.get("response"))
        finally:
            for fh in handles.values():
                fh.close()
        out = rows.copy()
        out["prompt"] = prompts
        out["response"] = responses
        return out

    def search_turns(self, w: Window, *, session: str = "", text: str = "", models=None, statuses=None,
                     limit: int = 200, scan_limit: int = 20000) -> pd.DataFrame:
        df = self._filter(w, session, models, statuses).iloc[::-1]
        if text:
            # text lives on disk: scan the newest matches of the other filters, at most scan_limit
            cand = self._texts(df.head(scan_limit))
            hit = [text in (p or "") or text in (r or "") for p, r in zip(cand["prompt"], cand["response"])]
            return cand[hit].head(limit)[TURN_COLUMNS + ["prompt", "response"]].reset_index(drop=True)
        return self._texts(df.head(limit))[TURN_COLUMNS + ["prompt", "response"]].reset_index(drop=True)

    def conversation(self, session_id: str) -> pd.DataFrame:
        turns, _ = self.frames()
        rows = turns[turns["session_id"] == session_id].sort_values(["time", "turn_index"])
        return self._texts(rows)[TURN_COLUMNS + ["prompt", "response"]].reset_index(drop=True)

    def health(self) -> dict[str, Any]:
        return {"files": len(self._files), "lines": self.stats.lines, "set_aside": self.stats.set_aside,
                "set_aside_samples": list(self.stats.samples), "turns": int(len(self._turns)),
                "feedback": int(len(self._feedback)),
                "pending_partial_lines": sum(1 for f in self._files.values() if f.pending)}
