"""Fault: the node's log disk fills up for real, under traffic, and is then freed.

The log directory is a small tmpfs the test mounts (``mount -t tmpfs -o size=…``; needs root /
CAP_SYS_ADMIN, as this sandbox has). A filler file leaves a few KiB free, the node's own
records fill the rest, writes fail with ENOSPC, the records wait in the writer's bounded
spill, requests keep being answered; the filler is deleted, and every record arrives with
``seekwatch_log_dropped_total`` still 0 and no torn line in any file.

(The writer's spill logic is also unit-tested with an injected ENOSPC opener in
tests/instrumentation/test_session_log.py; this is the same path through a real filesystem.)
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

CHAT = "/v1/chat/completions"


def metric(base_url: str, name: str) -> float:
    text = httpx.get(base_url + "/metrics", timeout=10).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + " ")
               or ln.startswith(name + "{"))


def lines_on_disk(log_dir: Path) -> list[bytes]:
    out: list[bytes] = []
    for f in sorted(log_dir.glob("*.jsonl")):
        out += [ln + b"\n" for ln in f.read_bytes().split(b"\n")[:-1]]
        assert f.read_bytes()[-1:] in (b"", b"\n"), f"{f} ends in a partial line"
    return out


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs mounted on a temp dir; unmounted in a finally."""
    mnt = tmp_path / "logfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path, leave: int) -> Path:
    """Write a filler file until only about ``leave`` bytes are free on path's filesystem."""
    filler = path / "filler.bin"
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * max(0, free - leave))
            f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_real_full_tmpfs_spills_then_every_record_arrives(node_factory, small_fs):
    log_dir = small_fs / "log"
    node = node_factory("--log-dir", str(log_dir), "--max-batch", "8")
    fill(small_fs, leave=24 * 1024)
    ok_ids: list[str] = []
    with httpx.Client(base_url=node.base_url, timeout=60) as c:
        # ~100 turns of ~1.5 KiB each: the node's records fill the last 24 KiB and then some
        for i in range(100):
            body = {"model": "deepseek-chat", "max_tokens": 8,
                    "messages": [{"role": "user", "content": f"第{i}个问题：" + "订单查询 " * 60}]}
            r = c.post(CHAT, json=body)
            assert r.status_code == 200, r.text      # the full disk never reaches the client
            ok_ids.append(r.headers["x-request-id"])
        time.sleep(2.5)                              # writer retries every 1 s: still full
        st = os.statvfs(small_fs)
        assert st.f_bavail * st.f_frsize < 8 * 1024, "the node should have filled the filesystem"
        on_disk = lines_on_disk(log_dir)
        assert len(on_disk) < len(ok_ids), "some records must be waiting in the spill"
        assert metric(node.base_url, "seekwatch_log_dropped_total") == 0
        assert node.proc.poll() is None

        (small_fs / "filler.bin").unlink()           # space freed
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            logged = {json.loads(ln)["request_id"] for ln in lines_on_disk(log_dir)
                      if json.loads(ln).get("event", {}).get("dataset") == "seekwatch.session"}
            if logged >= set(ok_ids):
                break
            time.sleep(0.5)
        assert set(ok_ids) <= logged, f"{len(set(ok_ids) - logged)} records never arrived"
        assert metric(node.base_url, "seekwatch_log_dropped_total") == 0
        assert metric(node.base_url, "seekwatch_log_records_total") >= len(ok_ids)
        # the node still serves and logs after the episode
        r = c.post(CHAT, json={"model": "deepseek-chat", "max_tokens": 2,
                               "messages": [{"role": "user", "content": "after"}]})
        assert r.status_code == 200
    node.stop()                                       # graceful: drains the writer
    lines = lines_on_disk(log_dir)
    for ln in lines:                                  # no torn or half-written line anywhere
        json.loads(ln)
    ids = [json.loads(ln)["request_id"] for ln in lines
           if json.loads(ln).get("event", {}).get("dataset") == "seekwatch.session"]
    assert len(ids) == len(set(ids)) == len(ok_ids) + 1   # each record exactly once
    out = node.output.read_text(errors="replace")
    assert "No space left" in out or "ENOSPC" in out or "disk" in out.lower(), out[-2000:]   # said, not silent
