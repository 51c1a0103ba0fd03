"""Throttling counts a client the way the connection limits do: an IPv6 client by its /64
and an IPv4 client the same with or without the IPv4-mapped IPv6 form, so moving to another
address of its own network does not shed the delays or the hard limit."""

from __future__ import annotations

import json

import pytest

from encimap import logs
from encimap.auth import AuthFailed, AuthUnavailable
from tests.support import Databases, make_config, make_vaultbox
from tests.test_auth_engine import close_engine, open_engine

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "addresses",
    [
        ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3", "2001:db8:1:2::4"],
        ["192.0.2.9", "::ffff:192.0.2.9", "192.0.2.9", "::ffff:192.0.2.9"],
    ],
)
async def test_a_client_cannot_shed_the_hard_limit_by_changing_address(
    databases: Databases, addresses: list[str]
) -> None:
    box = await make_vaultbox(databases, f"shed{len(addresses[0])}@vault.test", password="pw")
    cfg = make_config(
        databases,
        auth={
            "throttle_base_delay": 0.001,
            "throttle_max_delay": 0.002,
            "max_failures_per_ip": 3,
            "trusted_networks": [],
        },
    )
    engine, pools = await open_engine(cfg)
    try:
        *guesses, last = addresses
        for number, address in enumerate(guesses):
            with pytest.raises(AuthFailed):
                await engine.authenticate(
                    box.username, f"guess-{number}", service="imap", client_ip=address
                )
        with pytest.raises(AuthUnavailable):
            await engine.authenticate(box.username, "pw", service="imap", client_ip=last)
        # another network is not held back
        other = "2001:db8:1:3::1" if ":" in last else "192.0.2.10"
        assert await engine.authenticate(box.username, "pw", service="imap", client_ip=other)
    finally:
        await close_engine(engine, pools)


async def test_an_ipv4_client_behind_a_dual_stack_listener_is_logged_as_ipv4(
    databases: Databases, capsys: pytest.CaptureFixture[str]
) -> None:
    """fail2ban bans what the line says: ::ffff:192.0.2.7 would go to ip6tables, where an
    IPv4 client is never seen."""
    engine, pools = await open_engine(make_config(databases, auth={"trusted_networks": []}))
    logs.configure("info", "json")
    try:
        with pytest.raises(AuthFailed):
            await engine.authenticate(
                "nobody-mapped", "x", service="smtp", client_ip="::ffff:192.0.2.7"
            )
    finally:
        logs.configure("warning", "console")
        await close_engine(engine, pools)
    [line] = [e for e in capsys.readouterr().err.splitlines() if "auth failed:" in e]
    assert "rip=192.0.2.7" in json.loads(line)["event"]
