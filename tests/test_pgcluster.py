"""Test infrastructure that the product's `encimap dev` shares: loopback ports."""

from __future__ import annotations

import socket

from encimap.pgcluster import free_port


def test_free_port_is_bindable_and_outside_the_ephemeral_range():
    low, high = (int(n) for n in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    ports = {free_port() for _ in range(20)}
    assert all(not low <= port <= high for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
