"""One process supervisor for every child seekwatch starts: the demo's parts, the node the
tests and benchmarks start (:mod:`seekwatch.node_process`), the bundled log store
(:mod:`monitor.logstore.launcher`) and the servers the tests start (``tests/fixtures``).

Why one: stopping a process tree correctly is easy to get almost right. A part may spawn
children, some of which leave its process group (the log store's JVM, a browser), and a
PID may be reused once a process is gone. Three hand-written copies had drifted apart; the
rules now live here, on psutil (which follows children and detects PID reuse):

* every child starts in a session (process group) of its own, with stdin closed, so a
  Ctrl-C in the terminal reaches only the parent, which then stops its children in order;
* its output (stdout and stderr, or only stderr when the parent reads stdout) is appended
  to a file, and every error about the child quotes that file's tail;
* stopping is SIGTERM to the group, up to ``grace`` seconds for a clean shutdown, then
  SIGKILL to the group *and* to every descendant seen while it ran, also those that left.

Only the standard library and psutil are imported: the command-line tools that import this
stay cheap to start.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import psutil


class ProcessExited(RuntimeError):
    """The child exited while the parent waited for it to become ready."""


class NotReady(TimeoutError):
    """The child did not become ready in time (it is still running)."""


@dataclass(frozen=True)
class ProcessSpec:
    """What to start and how to stop it: a child described as data."""

    name: str
    argv: Sequence[str]
    #: stdout and stderr are appended here (only stderr with ``pipe_stdout``); None: inherited
    output: Path | None = None
    cwd: Path | None = None
    #: added to the parent's environment
    env: Mapping[str, str] = field(default_factory=dict)
    #: names removed from the parent's environment (a child that must not see a setting at all,
    #: where an empty value would mean something else)
    unset_env: Sequence[str] = ()
    #: seconds between SIGTERM and SIGKILL
    grace: float = 15.0
    #: stdout to a pipe the parent reads (``Supervised.proc.stdout``)
    pipe_stdout: bool = False
    #: pin the child, all its threads included, to these CPUs (benchmarks)
    cpus: frozenset[int] | None = None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _running(p: psutil.Process) -> bool:
    """Running and not a zombie (``is_running`` also says False when the PID was reused)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def alive(pid: int) -> bool:
    """Whether a process ``pid`` is running (a zombie is not)."""
    p = _process(pid)
    return p is not None and _running(p)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, also those that moved to a session of their own."""
    p = _process(pid)
    if p is None:
        return []
    try:
        return [c.pid for c in p.children(recursive=True)]
    except psutil.Error:
        return []


def _group(pgid: int) -> list[psutil.Process]:
    """The processes of process group ``pgid`` (orphans of a dead leader included)."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                out.append(p)
        except (OSError, psutil.Error):
            pass
    return out


class Supervised:
    """A running child started by :func:`start`. ``proc`` is its :class:`subprocess.Popen`."""

    def __init__(self, spec: ProcessSpec, proc: subprocess.Popen):
        self.spec = spec
        self.proc = proc
        self.name = spec.name
        self.grace = spec.grace
        self._seen: dict[int, psutil.Process] = {}   # descendants seen while it ran

    # -- state -------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def out_path(self) -> Path | None:
        return self.spec.output

    def tail(self, n: int = 2000) -> str:
        """The last ``n`` characters of its output file."""
        if self.spec.output is None:
            return ""
        try:
            return Path(self.spec.output).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def describe_exit(self, while_: str = "") -> str:
        where = f" ({self.spec.output})" if self.spec.output else ""
        return (f"{self.name} exited with status {self.proc.returncode}{' ' + while_ if while_ else ''}; "
                f"its output{where}:\n{self.tail()}")

    # -- readiness ---------------------------------------------------------------------------
    def wait_ready(self, check: Callable[[], bool], timeout: float, *, what: str = "ready",
                   interval: float = 0.2, sleep: Callable[[float], object] = time.sleep,
                   interrupted: Callable[[], None] = lambda: None) -> None:
        """Call ``check()`` every ``interval`` until it returns True. Raises
        :class:`ProcessExited` if the child exits first, :class:`NotReady` after ``timeout``.
        ``interrupted`` is called on every round (it may raise to abandon the wait); ``sleep``
        may be an event's ``wait`` so a stop request cuts the pause short."""
        deadline = time.monotonic() + timeout
        while True:
            interrupted()
            if not self.running:
                raise ProcessExited(self.describe_exit("while starting"))
            if check():
                return
            if time.monotonic() >= deadline:
                raise NotReady(f"{self.name} not {what} within {timeout:.0f} s; its output"
                               f"{f' ({self.spec.output})' if self.spec.output else ''}:\n{self.tail()}")
            sleep(interval)

    # -- Popen's own calls, so a Supervised stands in for one ------------------------------
    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def send_signal(self, sig: int) -> None:
        """``sig`` to the leader only (SIGHUP to reload, a SIGKILL to test crash recovery)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    # -- stopping ----------------------------------------------------------------------------
    def remember_descendants(self) -> None:
        """Note its current descendants, so a stop also reaches those that leave it later."""
        if not self.running:
            return
        p = _process(self.pid)
        if p is None:
            return
        try:
            for c in p.children(recursive=True):
                self._seen.setdefault(c.pid, c)
        except psutil.Error:
            pass

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def leftovers(self) -> list[int]:
        """Its processes still running: the leader, its descendants (seen now or earlier), its
        process group."""
        procs: dict[int, psutil.Process] = dict(self._seen)
        for p in _group(self.pid):
            procs.setdefault(p.pid, p)
        if self.running:
            leader = _process(self.pid)
            if leader is not None:
                procs.setdefault(leader.pid, leader)
                try:
                    for c in leader.children(recursive=True):
                        procs.setdefault(c.pid, c)
                except psutil.Error:
                    pass
        return sorted(pid for pid, p in procs.items() if _running(p))

    def _force(self) -> bool:
        """SIGKILL whatever is left; True if anything was."""
        left = self.leftovers()
        if not left:
            return False
        self.signal_group(signal.SIGKILL)
        procs = [p for p in (self._seen.get(pid) or _process(pid) for pid in left) if p is not None]
        for p in procs:
            try:
                p.kill()   # psutil checks the PID still names the same process
            except psutil.Error:
                pass
        deadline = time.monotonic() + 5.0   # SIGKILL is asynchronous: return once they are gone
        while any(_running(p) for p in procs) and time.monotonic() < deadline:
            time.sleep(0.01)
        return True

    def stop(self, grace: float | None = None, sig: int = signal.SIGTERM) -> int | None:
        """``sig`` to the group, up to ``grace`` seconds (default: the spec's) for it and its
        descendants to end, then SIGKILL. Returns the leader's exit status."""
        stop_all([self], grace=grace, sig=sig)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL now, no clean shutdown (crash tests)."""
        self.stop(grace=0, sig=signal.SIGKILL)


def start(spec: ProcessSpec) -> Supervised:
    """Start ``spec`` in a session of its own (see the module docstring)."""
    out = open(spec.output, "ab") if spec.output is not None else None  # noqa: SIM115 - closed below
    pin = (lambda: os.sched_setaffinity(0, spec.cpus)) if spec.cpus else None
    env = {k: v for k, v in os.environ.items() if k not in spec.unset_env}
    try:
        proc = subprocess.Popen(
            list(spec.argv), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if spec.pipe_stdout else out,
            stderr=out if out is not None else None,
            cwd=spec.cwd, env={**env, **spec.env}, start_new_session=True, preexec_fn=pin)
    finally:
        if out is not None:
            out.close()  # the child holds its own descriptor
    return Supervised(spec, proc)


def stop_all(children: Iterable[Supervised], *, grace: float | None = None, sig: int = signal.SIGTERM,
             hurry: Callable[[], bool] = lambda: False) -> list[str]:
    """Stop ``children`` together: ``sig`` to every group at once, then wait for each up to
    its grace (``grace`` overrides it; cut short once ``hurry()`` says so, e.g. a second
    Ctrl-C), then SIGKILL what is left of it. Returns the names that needed SIGKILL.

    Descendants in a session of their own (the log store's JVM) are stopped by their
    parent's clean shutdown; the SIGKILL reaches them too when it does not happen."""
    children = list(children)
    for c in children:
        c.remember_descendants()
    for c in children:
        c.signal_group(sig)
    now = time.monotonic()
    deadline = {id(c): now + (c.grace if grace is None else grace) for c in children}
    killed = []
    for c in children:
        end = deadline[id(c)]
        while c.running and time.monotonic() < end and not hurry():
            time.sleep(0.05)
        # the leader is gone (or overdue): give its descendants a moment, then force
        settle = min(end, time.monotonic() + 3.0)
        while c.leftovers() and time.monotonic() < settle and not hurry():
            time.sleep(0.05)
        if c._force():
            killed.append(c.name)
        try:
            c.proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL always ends it
            pass
    return killed


__all__ = ["NotReady", "ProcessExited", "ProcessSpec", "Supervised", "alive", "descendants", "free_port",
           "port_free", "start", "stop_all"]
