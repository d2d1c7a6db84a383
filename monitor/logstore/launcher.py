"""Run the bundled single-node OpenSearch (search-engine/, built by
scripts/setup.d/30-search-engine.sh) as a child process: pick a port, keep its data in a
directory, wait until it is healthy, stop it cleanly (SIGTERM, then SIGKILL after a grace),
all through :mod:`contracts.supervisor`, the one process supervisor of seekwatch.

The launcher (``dev.seekwatch.engine.Launcher``) writes its URL to a "ready file" once its
HTTP port answers, so the port can be 0 (the OS picks a free one) without a race.

Only the standard library and the supervisor are imported here: ``seekwatch search-engine
--help`` stays cheap.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from contracts.supervisor import NotReady, ProcessExited, ProcessSpec, Supervised, start as start_process

LAUNCHER_CLASS = "dev.seekwatch.engine.Launcher"
JAR_NAME = "seekwatch-search-engine.jar"

#: flavor -> (build dir under the repo, jar, main class). "opensearch" is the engine for tests
#: and the local stack; "elasticsearch-core" (Elasticsearch 8.19 without x-pack and modules)
#: only serves the smoke tests of the Elasticsearch code path.
FLAVORS = {
    "opensearch": ("search-engine/target", JAR_NAME, LAUNCHER_CLASS),
    "elasticsearch-core": ("search-engine/elasticsearch/target", "seekwatch-es-core.jar",
                           "org.elasticsearch.node.CoreOnlyLauncher"),
}


class LaunchError(RuntimeError):
    """The log store could not be found, started or stopped."""


def default_build_dir(flavor: str = "opensearch") -> Path:
    """``search-engine/target`` of this checkout (OpenSearch; ``$SEEKWATCH_SEARCH_ENGINE_DIR``
    overrides it), or the build dir of another flavor."""
    env = os.environ.get("SEEKWATCH_SEARCH_ENGINE_DIR")
    if env and flavor == "opensearch":
        return Path(env)
    return Path(__file__).resolve().parents[2] / FLAVORS[flavor][0]


def find_java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise LaunchError("java not found: install a JDK 17 (Debian: openjdk-17-jre-headless)")
    return java


def classpath(build_dir: Path | None = None, flavor: str = "opensearch") -> str:
    build = Path(build_dir) if build_dir else default_build_dir(flavor)
    jar = build / FLAVORS[flavor][1]
    lib = build / "lib"
    if not jar.exists() or not lib.is_dir():
        raise LaunchError(
            f"log store not built ({jar} missing): run scripts/setup.d/30-search-engine.sh"
        )
    return f"{jar}{os.pathsep}{lib}/*"


def http_get_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URL we built
        return json.loads(resp.read().decode("utf-8"))


class LogStoreServer:
    """One single-node OpenSearch child process.

    ``data_dir`` holds everything the node writes (``home/`` with config/logs and ``data/``
    with the indices), so a restart on the same ``data_dir`` keeps the documents.
    """

    def __init__(
        self,
        data_dir: str | Path,
        port: int = 0,
        heap: str = "512m",
        max_heap: str | None = None,
        build_dir: str | Path | None = None,
        log_file: str | Path | None = None,
        extra_settings: dict[str, str] | None = None,
        flavor: str = "opensearch",
    ) -> None:
        if flavor not in FLAVORS:
            raise LaunchError(f"unknown log store flavor {flavor!r}")
        self.flavor = flavor
        self.data_dir = Path(data_dir).resolve()
        self.port = int(port)
        self.heap = heap
        self.max_heap = max_heap or heap
        self.build_dir = Path(build_dir) if build_dir else None
        self.log_path = Path(log_file) if log_file else self.data_dir / "engine.log"
        self.extra_settings = dict(extra_settings or {})
        self.process: Supervised | None = None
        self.url: str | None = None

    @property
    def proc(self) -> subprocess.Popen | None:
        """The running JVM's Popen, or None when not started."""
        return self.process.proc if self.process is not None else None

    @property
    def ready_file(self) -> Path:
        return self.data_dir / "engine.url"

    def command(self) -> list[str]:
        cmd = [
            find_java(),
            f"-Xms{self.heap}",
            f"-Xmx{self.max_heap}",
            "-Djava.awt.headless=true",
            "-Dfile.encoding=UTF-8",
            "-Dlog4j2.formatMsgNoLookups=true",
            "-cp",
            classpath(self.build_dir, self.flavor),
            FLAVORS[self.flavor][2],
            "--home", str(self.data_dir / "home"),
            "--data", str(self.data_dir / "data"),
            "--port", str(self.port),
            "--ready-file", str(self.ready_file),
        ]
        for key, value in self.extra_settings.items():
            cmd.append(f"-E{key}={value}")
        return cmd

    def start(self, timeout: float = 90.0) -> str:
        """Start the node and block until it answers ``GET /`` and the cluster is at least
        yellow. Returns the base URL."""
        if self.process is not None and self.process.running:
            raise LaunchError("log store already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        # its own session (the supervisor's rule): a Ctrl-C in the terminal reaches us, and we stop it cleanly
        self.process = start_process(ProcessSpec(name="log store", argv=self.command(), output=self.log_path,
                                                 grace=30.0))

        def ready() -> bool:
            if not self.ready_file.exists():
                return False
            url = self.ready_file.read_text("utf-8").strip()
            if url and self._healthy(url):
                self.url = url
                return True
            return False

        try:
            self.process.wait_ready(ready, timeout, what="healthy")
        except ProcessExited:
            raise LaunchError(f"log store exited with status {self.process.returncode} during start; "
                              f"last log lines:\n{self.tail_log()}") from None
        except NotReady:
            self.stop()
            raise LaunchError(f"log store not healthy within {timeout:.0f}s; log:\n{self.tail_log()}") from None
        return self.url

    def _healthy(self, url: str) -> bool:
        try:
            if self.flavor == "opensearch":  # core-only Elasticsearch has no GET /
                if not http_get_json(url + "/").get("version"):
                    return False
            health = http_get_json(url + "/_cluster/health?wait_for_status=yellow&timeout=1s")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return health.get("status") in ("green", "yellow")

    def tail_log(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM (the launcher's shutdown hook closes the node and flushes), then SIGKILL
        after ``grace`` seconds. Returns the exit status."""
        process = self.process
        if process is None:
            return None
        status = process.stop(grace=grace)
        self.ready_file.unlink(missing_ok=True)
        self.process = None
        self.url = None
        return status

    def kill(self) -> None:
        """SIGKILL, no clean shutdown (to test crash recovery)."""
        if self.process is not None:
            self.process.kill()
        self.stop()

    def __enter__(self) -> "LogStoreServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
