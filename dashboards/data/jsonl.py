"""Local JSON-lines session logs (the embedded default source): parsed with pyarrow, kept in
pandas, read incrementally.

- The files are found and followed by the one session-log tailer (:mod:`contracts.logtail`),
  as the shipper and the node's billing find them: every ``*.jsonl`` and rotated
  ``*.jsonl.N`` under the log directory, tracked by inode and first-line fingerprint, with
  the byte offset read so far: a refresh parses only the bytes appended since, a file renamed
  by rotation is not read twice, and a truncated or replaced file is read again from 0. A
  file renamed to a name that is not a log file's (``x.jsonl-20261204``) or deleted is read
  to its end through the handle kept since the last refresh, until its writer leaves it.
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contracts.log_schema import FEEDBACK_DATASET, SESSION_DATASET
from contracts.logtail import LogTailer, TailedFile

from contracts.signals import CHAT, DEFAULT_CONVERSATION_IDLE_S

from .base import TURN_COLUMNS, Window
from .frame import FrameAnalytics

CHUNK_BYTES = 16 << 20
_TURN_CACHE_COLS = ["time", "session_id", "request_id", "model_version", "status", "request_kind", "turn_index", "latency_ms",
                    "ttft_ms", "input_tokens", "output_tokens", "cost_usd", "_file", "_off"]
_FB_CACHE_COLS = ["time", "request_id", "session_id", "rating", "feedback_id", "_file"]
_NUMERIC = {"turn_index": "int64", "latency_ms": "float64", "ttft_ms": "float64",
            "input_tokens": "int64", "output_tokens": "int64", "cost_usd": "float64"}


def _turn_schema():
    import pyarrow as pa

    return pa.schema([("time", pa.timestamp("ms", tz="UTC")), ("session_id", pa.string()), ("request_id", pa.string()),
                      ("model_version", pa.string()), ("status", pa.string()), ("request_kind", pa.string()),
                      ("turn_index", pa.int64()),
                      ("latency_ms", pa.float64()), ("ttft_ms", pa.float64()), ("input_tokens", pa.int64()),
                      ("output_tokens", pa.int64()), ("cost_usd", pa.float64()), ("_file", pa.int32()), ("_off", pa.int64())])


def _fb_schema():
    import pyarrow as pa

    return pa.schema([("time", pa.timestamp("ms", tz="UTC")), ("request_id", pa.string()), ("session_id", pa.string()),
                      ("rating", pa.string()), ("feedback_id", pa.string()), ("_file", pa.int32())])


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([
        ("@timestamp", pa.timestamp("ms", tz="UTC")),
        ("event", pa.struct([("dataset", pa.string())])),
        ("session_id", pa.string()),
        ("request_id", pa.string()),
        ("model_version", pa.string()),
        ("status", pa.string()),
        ("request_kind", pa.string()),
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
            "status": rec.get("status"), "request_kind": rec.get("request_kind"), "turn_index": rec.get("turn_index"), "latency_ms": rec.get("latency_ms"),
            "ttft_ms": rec.get("ttft_ms"), "cost_usd": rec.get("cost_usd"),
            "input_tokens": usage.get("input_tokens"), "output_tokens": usage.get("output_tokens"),
            "rating": rec.get("rating"), "feedback_id": rec.get("feedback_id")}


@dataclass
class _File:
    fid: int
    tailed: TailedFile  # path and offset (bytes consumed, always at a line boundary)
    pending: int = 0  # bytes after the last newline, not yet parsed

    @property
    def path(self) -> Path:
        return Path(self.tailed.path)

    @property
    def offset(self) -> int:
        return self.tailed.offset

    @offset.setter
    def offset(self, value: int) -> None:
        self.tailed.offset = value


@dataclass
class ParseStats:
    lines: int = 0
    set_aside: int = 0
    samples: list[str] = field(default_factory=list)


class JsonlSource(FrameAnalytics):
    """``cache_dir``: where parsed rows of *settled* log files (whole, unchanged for
    ``settle_s``; rotated files are) are kept as Arrow IPC, keyed by device, inode, size and
    mtime, so a restarted dashboard reads them back instead of parsing JSON again. ``None``:
    no cache. The live file is always parsed."""

    name = "jsonl"

    def __init__(self, log_dir: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
                 settle_s: float = 60.0, cache_async: bool = True,
                 conversation_idle_s: float = DEFAULT_CONVERSATION_IDLE_S):
        self.log_dir = Path(log_dir)
        self.conversation_idle_s = conversation_idle_s
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.settle_s = settle_s
        self.cache_async = cache_async
        self._cached: set[int] = set()
        self._cache_thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._tailer = LogTailer(self.log_dir)
        self._files: dict[str, _File] = {}  # by the tailer's key ("dev:inode")
        self._paths: dict[int, Path] = {}
        self._turns = self._empty_turns()
        self._feedback = pd.DataFrame({"time": pd.Series([], dtype="datetime64[ms, UTC]"),
                                       "request_id": pd.Series([], dtype=object),
                                       "session_id": pd.Series([], dtype=object),
                                       "rating": pd.Series([], dtype=object)})
        self.stats = ParseStats()
        self._file_lines: dict[int, int] = {}
        self._file_bad: dict[int, int] = {}
        self.refreshes = 0

    @staticmethod
    def _empty_turns() -> pd.DataFrame:
        cols: dict[str, Any] = {"time": pd.Series([], dtype="datetime64[ms, UTC]")}
        for c in ("session_id", "request_id", "model_version", "status", "request_kind"):
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
    def refresh(self) -> bool:
        """Parse whatever was appended since the last call. Returns True when data changed."""
        with self._lock:
            self.refreshes += 1
            new_turns: list[pd.DataFrame] = []
            new_fb: list[pd.DataFrame] = []
            self._tailer.scan()
            for tf in self._tailer.live():
                try:
                    st = os.stat(tf.path)
                except OSError:
                    continue
                f = self._files.get(tf.key)
                if f is None:
                    f = self._files[tf.key] = _File(len(self._paths), tf)
                    self._paths[f.fid] = f.path
                    hit = self._cache_load(f, st)
                    if hit is not None:
                        new_turns += hit[0]
                        new_fb += hit[1]
                        continue
                self._paths[f.fid] = f.path
                t, fb = self._read_new(f, st.st_size)
                new_turns += t
                new_fb += fb
            for tf in self._tailer.vanished():  # deleted or rotated away: its rows stay
                f = self._files.get(tf.key)
                size = self._tailer.held_size(tf)  # only through its own handle: its name may hold the next file
                if f is not None and size is not None:  # what was appended before it went
                    t, fb = self._read_new(f, size)
                    new_turns += t
                    new_fb += fb
                if self._tailer.writer_done(tf):
                    self._tailer.forget(tf)
                    self._files.pop(tf.key, None)  # a later file on the same inode is another file
            self._tailer.keep_handles()
            if not new_turns and not new_fb:
                return False
            if new_turns:
                import pyarrow as pa

                add = pa.concat_tables(new_turns).to_pandas()
                turns = pd.concat([self._turns, add], ignore_index=True) if len(self._turns) else add
                if not turns["time"].is_monotonic_increasing:
                    turns = turns.sort_values("time", kind="stable", ignore_index=True)
                if not turns["request_id"].is_unique:
                    turns = turns.drop_duplicates("request_id", keep="last", ignore_index=True)
                self._turns = turns
            if new_fb:
                import pyarrow as pa

                add_fb = pa.concat_tables(new_fb).to_pandas()
                fb = pd.concat([self._feedback, add_fb], ignore_index=True) if len(self._feedback) else add_fb
                fb = fb.drop_duplicates("feedback_id", keep="last", ignore_index=True) if "feedback_id" in fb else fb
                self._feedback = fb
            self._derive()
        if self.cache_dir is not None:
            if self.cache_async:
                if self._cache_thread is None or not self._cache_thread.is_alive():
                    self._cache_thread = threading.Thread(target=self._cache_write, name="jsonl-cache", daemon=True)
                    self._cache_thread.start()
            else:
                self._cache_write()
        return True

    # ------------------------------------------------------------------ parse cache (Arrow IPC)
    @staticmethod
    def _cache_name(st: os.stat_result) -> str:
        return f"{st.st_dev}-{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"

    def _cache_load(self, f: _File, st: os.stat_result):
        if self.cache_dir is None:
            return None
        base = self.cache_dir / self._cache_name(st)
        try:
            import pyarrow as pa
            import pyarrow.compute as pc  # noqa: F401

            out = []
            for kind in ("turns", "fb"):
                with pa.memory_map(str(base) + f".{kind}.arrow") as src:
                    tbl = pa.ipc.open_file(src).read_all()
                meta = tbl.schema.metadata or {}
                i = tbl.schema.get_field_index("_file")
                tbl = tbl.set_column(i, "_file", pa.array(np.full(len(tbl), f.fid, dtype=np.int32)))
                tbl = tbl.cast(_turn_schema() if kind == "turns" else _fb_schema())
                out.append([tbl] if len(tbl) else [])
        except (OSError, ValueError, KeyError):  # missing or unreadable: parse the file instead
            return None
        f.offset, f.pending = st.st_size, 0
        self._cached.add(f.fid)
        self.stats.set_aside += int(meta.get(b"set_aside", b"0"))
        self.stats.lines += int(meta.get(b"lines", b"0"))
        return out[0], out[1]

    def _cache_write(self) -> None:
        import pyarrow as pa

        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            turns, fb = self._turns, self._feedback
            now = time.time()
            for key, f in list(self._files.items()):
                if f.fid in self._cached or f.pending:
                    continue
                try:
                    st = f.path.stat()
                except OSError:
                    continue
                if f"{st.st_dev}:{st.st_ino}" != key or st.st_size != f.offset or now - st.st_mtime < self.settle_s:
                    continue
                base = self.cache_dir / self._cache_name(st)
                for stale in self.cache_dir.glob(f"{st.st_dev}-{st.st_ino}-*"):
                    stale.unlink(missing_ok=True)
                meta = {b"lines": str(self._file_lines.get(f.fid, 0)).encode(),
                        b"set_aside": str(self._file_bad.get(f.fid, 0)).encode()}
                for kind, df, cols in (("turns", turns, _TURN_CACHE_COLS), ("fb", fb, _FB_CACHE_COLS)):
                    part = df.loc[df["_file"] == f.fid, cols] if "_file" in df.columns else df.iloc[0:0][[]]
                    tbl = pa.Table.from_pandas(part, preserve_index=False).cast(
                        _turn_schema() if kind == "turns" else _fb_schema())
                    tbl = tbl.replace_schema_metadata(meta)
                    tmp = str(base) + f".{kind}.arrow.tmp"
                    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, tbl.schema) as w:
                        w.write_table(tbl)
                    os.replace(tmp, str(base) + f".{kind}.arrow")
                self._cached.add(f.fid)
        except (OSError, ValueError):  # a cache is an optimisation: never fail a render for it
            return

    def _derive(self) -> None:
        """Per-turn flags the KPIs need, computed once per refresh instead of once per query:
        completed / rated up / rated down (the feedback join) and integer session codes."""
        t = self._turns
        if t.empty:
            return
        drop = [c for c in ("_done", "_up", "_down", "_sess", "_chat", "_down_at") if c in t.columns]
        t = t.drop(columns=drop)
        down, up = self._rated("down"), self._rated("up")
        import pyarrow as pa
        import pyarrow.compute as pc

        rid = pa.array(t["request_id"], type=pa.string(), from_pandas=True)

        def member(ids) -> np.ndarray:
            if not len(ids):
                return np.zeros(len(t), bool)
            hit = pc.is_in(rid, value_set=pa.array(list(ids), type=pa.string()))
            return pc.fill_null(hit, False).to_numpy(zero_copy_only=False)

        is_down = member(down)
        t["_down"] = is_down
        t["_up"] = member(up)
        kind = t["request_kind"].to_numpy()
        t["_chat"] = pd.isna(kind) | (kind == CHAT)
        t["_done"] = t["_chat"].to_numpy() & (t["status"] == "completed").to_numpy() & ~is_down
        fb = self._feedback
        first_down = fb[fb["rating"] == "down"].groupby("request_id")["time"].min() if not fb.empty else None
        never = np.iinfo(np.int64).max
        if first_down is None or first_down.empty:
            t["_down_at"] = np.full(len(t), never, dtype=np.int64)
        else:
            at = t["request_id"].map(pd.Series(first_down.dt.as_unit("ms").array.asi8, index=first_down.index))
            vals = at.to_numpy(dtype="float64", na_value=np.nan)   # epoch ms: exact in float64
            out = np.full(len(t), never, dtype=np.int64)
            hit = ~np.isnan(vals)
            out[hit] = vals[hit].astype(np.int64)
            t["_down_at"] = out
        t["_sess"] = pd.factorize(t["session_id"])[0].astype(np.int64)
        self._turns = t

    def _read_new(self, f: _File, size: int) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
        """The lines appended since the last read, unless nothing but the pending partial line grew."""
        if size == f.offset or (f.pending and size - f.offset <= f.pending):
            return [], []
        return self._read_file(f, size)

    def _read_file(self, f: _File, size: int) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
        turns: list[pd.DataFrame] = []
        fbs: list[pd.DataFrame] = []
        pos = f.offset
        while pos < size:
            block = self._tailer.read_block(f.tailed, pos, min(CHUNK_BYTES, size - pos))
            if not block:  # no newline till EOF: a line still being written
                f.pending = max(0, size - pos)
                break
            t, fb = self._parse_block(block, f.fid, pos)
            if len(t):
                turns.append(t)
            if len(fb):
                fbs.append(fb)
            pos += len(block)
            f.offset = pos
            f.pending = 0
        return turns, fbs

    def _parse_block(self, block: bytes, fid: int, base: int):
        """Whole lines -> (turns, feedback) Arrow tables. Fast path: one pyarrow parse of the
        block; if any line breaks it, every line is parsed on its own and bad ones set aside."""
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
            flat = flat.append_column("_off", pa.array(offsets, pa.int64()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            flat = self._parse_lines(block, starts[nonblank], ends[nonblank], base, fid)
        self.stats.lines += int(len(offsets))
        self._file_lines[fid] = self._file_lines.get(fid, 0) + int(len(offsets))
        return self._select(flat, fid)

    def _select(self, flat, fid: int):
        import pyarrow as pa
        import pyarrow.compute as pc

        ds = flat["dataset"]
        is_fb = pc.fill_null(pc.equal(ds, FEEDBACK_DATASET), False)
        legacy = pc.and_(pc.and_(pc.is_null(ds), pc.is_valid(flat["request_id"])), pc.is_null(flat["rating"]))
        is_turn = pc.or_(pc.fill_null(pc.equal(ds, SESSION_DATASET), False), legacy)
        is_turn = pc.and_(is_turn, pc.and_(pc.is_valid(flat["time"]), pc.is_valid(flat["session_id"])))
        bad = len(flat) - pc.sum(pc.or_(is_fb, is_turn).cast(pa.int64())).as_py() if len(flat) else 0
        self.stats.set_aside += int(bad or 0)
        self._file_bad[fid] = self._file_bad.get(fid, 0) + int(bad or 0)
        t = flat.filter(is_turn)
        cols = {"time": t["time"]}
        for c in ("session_id", "request_id", "model_version", "status", "request_kind"):
            cols[c] = t[c]
        for c, typ in _NUMERIC.items():
            col = t[c]
            if c != "ttft_ms":
                col = pc.fill_null(col, 0)
            cols[c] = pc.cast(col, pa.int64() if typ == "int64" else pa.float64(), safe=False)
        cols["_file"] = pa.array(np.full(len(t), fid, dtype=np.int32))
        cols["_off"] = t["_off"]
        turns = pa.table(cols).cast(_turn_schema())
        keep_fb = pc.and_(is_fb, pc.fill_null(pc.is_in(flat["rating"], value_set=pa.array(["up", "down"])), False))
        fb = flat.filter(keep_fb).select(["time", "request_id", "session_id", "rating", "feedback_id"])
        fb = fb.append_column("_file", pa.array(np.full(len(fb), fid, dtype=np.int32))).cast(_fb_schema())
        return turns, fb

    def _parse_lines(self, block: bytes, starts, ends, base: int, fid: int):
        import pyarrow as pa

        rows, offs = [], []
        for s, e in zip(starts, ends):
            line = block[s:e]
            try:
                rec = _flatten_record(json.loads(line))
            except (ValueError, UnicodeDecodeError):
                rec = None
            if rec is None:
                self.stats.set_aside += 1
                self._file_bad[fid] = self._file_bad.get(fid, 0) + 1
                if len(self.stats.samples) < 5:
                    self.stats.samples.append(line[:120].decode("utf-8", "replace"))
                continue
            rows.append(rec)
            offs.append(base + int(s))
        df = pd.DataFrame(rows, columns=["time", "dataset", "session_id", "request_id", "model_version", "status",
                                         "request_kind", "turn_index", "latency_ms", "ttft_ms", "cost_usd", "input_tokens",
                                         "output_tokens", "rating", "feedback_id"])
        cols = {"time": pa.array(pd.to_datetime(df["time"], utc=True).astype("datetime64[ms, UTC]"),
                                 type=pa.timestamp("ms", tz="UTC"), from_pandas=True)}
        for c in ("dataset", "session_id", "request_id", "model_version", "status", "request_kind", "rating",
                  "feedback_id"):
            cols[c] = pa.array([v if isinstance(v, str) else None for v in df[c]], type=pa.string())
        for c in _NUMERIC:
            cols[c] = pa.array(pd.to_numeric(df[c], errors="coerce").astype("float64"), type=pa.float64(), from_pandas=True)
        cols["_off"] = pa.array(np.asarray(offs, dtype="int64"))
        return pa.table(cols)

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
