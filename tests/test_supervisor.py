"""The one process supervisor (contracts.supervisor): a clean stop is a SIGTERM; a child that
ignores it, and a grandchild that left the process group, are SIGKILLed after the grace; a
child that dies while starting is reported with its output."""
from __future__ import annotations

import signal
import sys
import textwrap

import pytest

from contracts.supervisor import NotReady, ProcessExited, ProcessSpec, alive, descendants, start, stop_all

#: a child that starts a grandchild in a session of its own, prints both PIDs, then waits;
#: with "stubborn" both ignore SIGTERM
TREE = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    stubborn = sys.argv[1] == "stubborn"
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    code = "import signal, time\\n" + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n" if stubborn else "") + "time.sleep(600)"
    g = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    print(os.getpid(), g.pid, flush=True)
    time.sleep(600)
""")


def _tree(tmp_path, mode: str, grace: float):
    out = tmp_path / f"{mode}.out"
    p = start(ProcessSpec(name=mode, argv=[sys.executable, "-c", TREE, mode], output=out, grace=grace,
                          pipe_stdout=True))
    leader, grandchild = map(int, p.proc.stdout.readline().split())
    assert leader == p.pid and grandchild in descendants(p.pid)
    return p, grandchild


def test_a_stubborn_tree_is_killed_after_the_grace_grandchild_included(tmp_path):
    p, grandchild = _tree(tmp_path, "stubborn", grace=0.5)
    assert stop_all([p]) == ["stubborn"]
    assert p.returncode == -signal.SIGKILL
    assert not alive(grandchild) and p.leftovers() == []


def test_a_clean_child_stops_on_sigterm_and_its_session_leaving_grandchild_is_not_left_behind(tmp_path):
    p, grandchild = _tree(tmp_path, "clean", grace=20)
    p.stop()
    assert p.returncode == -signal.SIGTERM     # the leader took the SIGTERM, no SIGKILL needed
    assert not alive(grandchild)               # outside the group: killed as a remembered descendant


def test_a_child_that_dies_while_starting_is_reported_with_its_output(tmp_path):
    out = tmp_path / "dies.out"
    p = start(ProcessSpec(name="dies", argv=[sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"],
                          output=out))
    with pytest.raises(ProcessExited, match=r"(?s)dies exited with status 3 while starting.*no model here"):
        p.wait_ready(lambda: False, timeout=60)


def test_not_ready_in_time_leaves_it_running_for_the_caller_to_stop(tmp_path):
    p = start(ProcessSpec(name="slow", argv=[sys.executable, "-c", "import time; time.sleep(600)"],
                          output=tmp_path / "slow.out", grace=5))
    try:
        with pytest.raises(NotReady, match="slow not ready within 0 s"):
            p.wait_ready(lambda: False, timeout=0)
        assert p.running
    finally:
        p.stop()
    assert not p.running and p.leftovers() == []


def test_env_is_added_to_the_parents_and_unset_names_are_gone(tmp_path, monkeypatch):
    monkeypatch.setenv("SW_TEST_KEEP", "kept")
    monkeypatch.setenv("SW_TEST_DROP", "dropped")
    code = "import os; print(os.environ.get('SW_TEST_KEEP'), os.environ.get('SW_TEST_DROP'), os.environ.get('SW_TEST_ADD'))"
    p = start(ProcessSpec(name="env", argv=[sys.executable, "-c", code], env={"SW_TEST_ADD": "added"},
                          unset_env=("SW_TEST_DROP",), pipe_stdout=True))
    assert p.wait(60) == 0
    assert p.proc.stdout.read().decode().split() == ["kept", "None", "added"]
