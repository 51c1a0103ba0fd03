"""Test infrastructure that the product's `encimap dev` shares: loopback ports, the private
cluster."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from encimap.pgcluster import LocalCluster, free_port


def test_free_port_is_bindable_and_outside_the_ephemeral_range():
    low, high = (int(n) for n in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    ports = {free_port() for _ in range(20)}
    assert all(not low <= port <= high for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


@pytest.mark.skipif(os.geteuid() != 0, reason="the server user's path rights matter as root")
def test_a_cluster_starts_and_stops_after_a_parent_was_closed(tmp_path: Path):
    """As root the server runs as `postgres`; `encimap dev` starts an existing cluster again.
    pytest makes its temporary root 0700 whenever a session starts, and an operator may close
    a parent too: the next start, or stop, must open the path again, not fail with EACCES (a
    failed stop left the cluster running)."""
    parent = tmp_path / "closed"
    cluster = LocalCluster(parent / "pg")
    cluster.start()
    cluster.stop()
    parent.chmod(0o700)
    try:
        cluster.start()
        postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
        parent.chmod(0o700)
    finally:
        cluster.stop()
    assert not _alive(postmaster)  # not `running`: pg_ctl status fails alike


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie waits for its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
