"""deploy/rsyslog/seekwatch.conf with the real Debian rsyslogd (imfile + omelasticsearch),
started as a foreground process with its own config, pid file and work directory, posting
into the session engine through the same ingest pipeline."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from contracts.supervisor import ProcessSpec, start
from tests.fixtures.tools import require_tool
from tests.logstore.conftest import count_tag, tag_query, wait_until
from tests.logstore.gen import append_lines, append_partial, records

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "rsyslog" / "seekwatch.conf"
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
OMES = list(Path("/usr/lib").glob("*/rsyslog/omelasticsearch.so"))

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _rsyslog():
    require_tool("rsyslogd", also=RSYSLOGD)
    if not OMES:
        pytest.fail("rsyslog-elasticsearch (omelasticsearch.so) is not installed: scripts/setup.d/20-debian.sh "
                    "installs it (make test runs it)", pytrace=False)


def render(tmp: Path, url: str) -> Path:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    text = CONF.read_text()
    for needle in ("/var/log/seekwatch", "/var/spool/rsyslog", 'server="localhost"', 'serverport="9200"'):
        assert needle in text, needle  # the documented SETTINGS are still there
    text = (text.replace("/var/log/seekwatch", str(tmp / "logs"))
                .replace("/var/spool/rsyslog", str(tmp / "work"))
                .replace('server="localhost"', f'server="{host}"')
                .replace('serverport="9200"', f'serverport="{port}"'))
    conf = tmp / "rsyslog.conf"
    conf.write_text(f'global(workDirectory="{tmp / "work"}")\n' + text)
    return conf


class Rsyslogd:
    def __init__(self, tmp: Path, conf: Path) -> None:
        self.tmp, self.conf, self.proc = tmp, conf, None

    def start(self) -> None:
        """rsyslogd in the foreground (``-n``) through the one process supervisor, its output
        appended to ``rsyslogd.out``, one run after another."""
        self.out = self.tmp / "rsyslogd.out"
        self.out.write_bytes(b"")
        self.proc = start(ProcessSpec(name="rsyslogd", argv=[RSYSLOGD, "-n", "-f", str(self.conf),
                                                              "-i", str(self.tmp / "rsyslogd.pid")],
                                      output=self.out, grace=20.0))

    def stop(self) -> str:
        """SIGTERM (rsyslogd saves its queues and imfile offsets), SIGKILL after 20 s; returns
        this run's output."""
        if self.proc is None:
            return ""
        self.proc.stop()
        self.proc = None
        return self.out.read_text(errors="replace")


def test_rsyslog_config_is_valid(tmp_path, log_store_url):
    conf = render(tmp_path, log_store_url)
    (tmp_path / "logs").mkdir()
    (tmp_path / "work").mkdir()
    proc = subprocess.run([RSYSLOGD, "-N1", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rsyslog_ships_every_line_once_through_the_pipeline(tmp_path, store, log_store_url):
    tag = "rsyslog"
    logs, work = tmp_path / "logs", tmp_path / "work"
    logs.mkdir()
    work.mkdir()
    conf = render(tmp_path, log_store_url)
    recs = list(records(2000, seed=31, tag=tag))
    recs[0]["prompt"] = "请回电 13812345678"  # planted past the node's masker
    append_lines(logs / "session.jsonl", recs[:1000])
    append_partial(logs / "session.jsonl", "this is not json\n")
    daemon = Rsyslogd(tmp_path, conf)
    daemon.start()
    try:
        wait_until(lambda: count_tag(store, tag) >= 1000, 60, interval=0.5, what="first 1000 via rsyslog")
        out = daemon.stop()
        # written while rsyslog is down, picked up from its saved offset after the restart
        append_lines(logs / "session.jsonl", recs[1000:])
        daemon.start()
        wait_until(lambda: count_tag(store, tag) >= 2000, 60, interval=0.5, what="all 2000 via rsyslog")
        time.sleep(1.0)
        assert count_tag(store, tag) == 2000, out
    finally:
        out = daemon.stop()
    # re-reading everything (lost imfile state) duplicates nothing: ids + "create"
    for state in work.glob("imfile-state*"):
        state.unlink()
    daemon.start()
    try:
        time.sleep(4.0)
    finally:
        out += daemon.stop()
    assert count_tag(store, tag) == 2000, out
    dups = store.search("seekwatch-sessions", {"size": 0, "query": tag_query(tag), "aggs": {
        "d": {"terms": {"field": "request_id", "min_doc_count": 2, "size": 5}}}})
    assert dups["aggregations"]["d"]["buckets"] == []
    doc = store.search("seekwatch-sessions", {"query": {"term": {"request_id": recs[0]["request_id"]}}})
    src = doc["hits"]["hits"][0]["_source"]
    assert src["prompt"] == "请回电 [PHONE]"           # the ingest pipeline ran
    assert "ingested" in src["event"] and src["session_id"] == recs[0]["session_id"]
    dead = (logs / "seekwatch-rsyslog-dead-letter.log").read_text().splitlines()
    assert any('"reason":"invalid JSON"' in l and "this is not json" in l for l in dead)
