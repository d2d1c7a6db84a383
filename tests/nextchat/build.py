"""Build the real NextChat once, into a cache keyed by its source's hash.

The source is read-only (``$SEEKWATCH_NEXTCHAT_SRC``, else ``../shared/nextchat/src`` next to
the repository), so it is copied first and built in
``~/.cache/seekwatch/nextchat/<source-hash>/`` (``$SEEKWATCH_CACHE`` moves ``~/.cache/seekwatch``); later runs reuse that build (the
first takes minutes on two cores). Yarn 1 (as upstream uses) is installed with npm into a tools
folder of the cache, never globally. ``python -m tests.nextchat.build`` builds by hand.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SEEKWATCH_CACHE", Path.home() / ".cache" / "seekwatch")) / "nextchat"
YARN_VERSION = "1.22.19"


class BuildError(RuntimeError):
    pass


def source_dir() -> Path:
    env = os.environ.get("SEEKWATCH_NEXTCHAT_SRC")
    src = Path(env) if env else (ROOT.parent / "shared" / "nextchat" / "src")
    if not (src / "package.json").is_file():
        # a worktree under /work/wt/<name> sits two levels below the folder holding shared/
        alt = ROOT.parents[1] / "shared" / "nextchat" / "src"
        if not env and (alt / "package.json").is_file():
            return alt
        raise BuildError(f"NextChat source not found at {src}: set SEEKWATCH_NEXTCHAT_SRC to a checkout")
    return src


def source_hash(src: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order (first 16 hex digits)."""
    h = hashlib.sha256()
    for p in sorted(q for q in src.rglob("*") if q.is_file()):
        rel = p.relative_to(src).as_posix()
        if rel.startswith(("node_modules/", ".next/")):
            continue
        h.update(rel.encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _run(cmd: list[str], cwd: Path, log: Path, env: dict | None = None) -> None:
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        r = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if r.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:3])} failed (exit {r.returncode}); see {log}")


def require_node() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise BuildError("node/npm are not installed: scripts/setup.d/40-nextchat.sh installs them (make test runs it)")
    return node, npm


def build(src: Path | None = None) -> Path:
    """The folder of a finished standalone build (``server.js`` in it), building when missing.
    Test runs that start together wait for one build (a lock file) instead of clobbering it."""
    import fcntl

    _, npm = require_node()
    src = src or source_dir()
    home = CACHE / source_hash(src)
    standalone = home / "app" / ".next" / "standalone"
    if (home / "DONE").is_file() and (standalone / "server.js").is_file():
        return standalone
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (home / "DONE").is_file() and (standalone / "server.js").is_file():
            return standalone  # another run built it meanwhile
        return _build(src, home, standalone, npm)


def _build(src: Path, home: Path, standalone: Path, npm: str) -> Path:
    log = home / "build.log"
    app, tools = home / "app", CACHE / "tools"
    if app.exists():
        shutil.rmtree(app)  # an interrupted build starts over from a clean copy
    shutil.copytree(src, app, ignore=shutil.ignore_patterns("node_modules", ".next"))
    yarn = tools / "node_modules" / ".bin" / "yarn"
    if not yarn.exists():
        tools.mkdir(parents=True, exist_ok=True)
        _run([npm, "install", "--prefix", str(tools), "--no-audit", "--no-fund", f"yarn@{YARN_VERSION}"], tools, log)
    _run([str(yarn), "install", "--frozen-lockfile", "--network-timeout", "600000"], app, log, {"HUSKY": "0"})
    _run([str(yarn), "build"], app, log, {"NEXT_TELEMETRY_DISABLED": "1"})
    shutil.copytree(app / "public", standalone / "public", dirs_exist_ok=True)
    shutil.copytree(app / ".next" / "static", standalone / ".next" / "static", dirs_exist_ok=True)
    (home / "DONE").write_text(str(src) + "\n")
    return standalone


if __name__ == "__main__":
    try:
        print(build())
    except BuildError as e:
        sys.exit(str(e))
