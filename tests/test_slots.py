"""Connection counts shared by a service's processes (encimap.service.slots): a limit holds
over every process, a process cannot be handed its own slot twice, and a process that dies
leaves nothing counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from encimap.service.slots import LocalCounter, SharedCounter
from tests.support import REPO


def test_a_limit_holds_over_every_process(tmp_path):
    # Two counters on one file are two lock owners, as two processes are.
    first, second = SharedCounter(tmp_path / "users"), SharedCounter(tmp_path / "users")
    held = [first.take("alice", 3), second.take("alice", 3), first.take("alice", 3)]
    assert None not in held
    assert first.take("alice", 3) is None
    assert second.take("alice", 3) is None
    assert second.take("bob", 3) is not None  # another key, another count
    first.give_back(held[0])
    assert second.take("alice", 3) is not None
    assert (first.held("alice"), second.held("alice")) == (1, 2)


@pytest.mark.parametrize("kind", ["local", "shared"])
def test_one_process_gets_each_slot_once(kind, tmp_path):
    counts = LocalCounter() if kind == "local" else SharedCounter(tmp_path / "ips")
    tokens = [counts.take("192.0.2.1", 4) for _ in range(4)]
    assert None not in tokens
    assert counts.take("192.0.2.1", 4) is None
    assert counts.held("192.0.2.1") == 4
    for token in tokens:
        counts.give_back(token)
    assert counts.held("192.0.2.1") == 0
    assert counts.take("192.0.2.1", 1) is not None


def test_a_killed_process_leaves_nothing_counted(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from encimap.service.slots import SharedCounter;"
            f"c = SharedCounter(Path({str(tmp_path / 'users')!r}));"
            "assert all(c.take('alice', 5) is not None for _ in range(5));"
            "print('held', flush=True); sys.stdin.read()",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        counts = SharedCounter(tmp_path / "users")
        assert counts.take("alice", 5) is None
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert all(counts.take("alice", 5) is not None for _ in range(5))
    finally:
        holder.kill()
        holder.wait(10)


def test_limits_beyond_a_run_are_refused(tmp_path):
    with pytest.raises(ValueError):
        SharedCounter(tmp_path / "users").take("alice", 1 << 17)
