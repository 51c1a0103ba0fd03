"""RCPT lookups are reused between deliveries, and every change that alters an answer is seen
at once: the cache lives only while its LISTEN on `encimap_recipients` is heard."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from encimap.metrics import REGISTRY
from encimap.store.vaultboxes import Vaultbox
from tests.intake_support import LMTPClient, add_certificate, intake_config, port_of, running_intake
from tests.support import Databases, make_vaultbox

SETTLE_SECONDS = 5.0  # far below the cache's 60 s: passing proves the NOTIFY did the work


def lookups(source: str) -> float:
    return REGISTRY.get_sample_value("encimap_recipient_lookups_total", {"source": source}) or 0


async def rcpt(port: int, address: str) -> str:
    """The reply to RCPT TO:<address> in a fresh LMTP session."""
    client = await LMTPClient.connect(port)
    try:
        await client.command("LHLO client.test")
        await client.command("MAIL FROM:<alice@sender.test>")
        return await client.command(f"RCPT TO:<{address}>")
    finally:
        await client.close()


async def eventually(reply: Callable[[], Awaitable[str]], prefix: str) -> str:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        text = await reply()
        if text.startswith(prefix) or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.05)


async def listening(databases: Databases, *, other_than: int = 0) -> int:
    """Wait until the intake's LISTEN connection is up (its lookups are kept from then on);
    the backend's pid."""
    conn = await databases.connect()
    try:
        for _ in range(100):
            pid = await conn.fetchval(
                """SELECT pid FROM pg_stat_activity
                    WHERE query LIKE 'LISTEN%recipients%' AND pid <> $1""",
                other_than,
            )
            if pid:
                return pid
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise AssertionError("the intake never LISTENed on encimap_recipients")


async def vaultbox_with_certificate(
    databases: Databases, address: str, directory: Path
) -> Vaultbox:
    box = (await make_vaultbox(databases, address)).vaultbox
    await add_certificate(databases, box, directory)
    return box


@contextlib.asynccontextmanager
async def serving(databases: Databases) -> AsyncIterator[int]:
    """An intake on `databases` whose RCPT lookups are being kept; its port."""
    cfg = intake_config(databases)
    async with running_intake(cfg):
        await listening(databases)
        yield port_of(cfg)


@pytest.fixture
async def admin(databases: Databases) -> AsyncIterator[asyncpg.Connection]:
    conn = await databases.connect()
    yield conn
    await conn.close()


async def test_lookups_are_reused_and_every_change_is_seen_at_once(
    databases: Databases, admin: asyncpg.Connection, tmp_path: Path
):
    box = await vaultbox_with_certificate(databases, "cached@vault.test", tmp_path)
    async with serving(databases) as port:
        assert (await rcpt(port, "cached@vault.test")).startswith("250")
        cached = lookups("cache")
        assert (await rcpt(port, "Cached+tag@VAULT.test")).startswith("250")
        assert (await rcpt(port, "cached+tag@vault.test")).startswith("250")
        assert lookups("cache") == cached + 1  # same addresses, other case: reused

        await admin.execute("UPDATE vaultboxes SET status = 'suspended' WHERE id = $1", box.id)
        refused = await eventually(lambda: rcpt(port, "cached@vault.test"), "550")
        assert refused.startswith("550 5.2.1"), refused
        await admin.execute("UPDATE vaultboxes SET status = 'active' WHERE id = $1", box.id)
        back = await eventually(lambda: rcpt(port, "cached@vault.test"), "250")
        assert back.startswith("250"), back

        await admin.execute("UPDATE certificates SET is_active = false")
        missing = await eventually(lambda: rcpt(port, "cached@vault.test"), "451")
        assert missing.startswith("451 4.7.1"), missing

        # A miss is kept too, until the address comes to exist.
        assert (await rcpt(port, "later@vault.test")).startswith("550 5.1.1")
        assert (await rcpt(port, "later@vault.test")).startswith("550 5.1.1")
        await vaultbox_with_certificate(databases, "later@vault.test", tmp_path)
        later = await eventually(lambda: rcpt(port, "later@vault.test"), "250")
        assert later.startswith("250"), later


async def test_quota_lookups_are_never_reused(
    databases: Databases, admin: asyncpg.Connection, tmp_path: Path
):
    box = await vaultbox_with_certificate(databases, "quota@vault.test", tmp_path)
    await admin.execute(
        """UPDATE vaultboxes SET limits = '{"max_messages": 1000}' WHERE id = $1""", box.id
    )
    async with serving(databases) as port:
        before = lookups("database")
        for _ in range(3):
            assert (await rcpt(port, "quota@vault.test")).startswith("250")
        assert lookups("database") == before + 3


async def test_a_lost_database_is_not_hidden_by_the_cache(
    private_cluster: Databases, tmp_path: Path
):
    await vaultbox_with_certificate(private_cluster, "outage@vault.test", tmp_path)
    async with serving(private_cluster) as port:
        for _ in range(2):
            assert (await rcpt(port, "outage@vault.test")).startswith("250")
        await asyncio.to_thread(private_cluster.cluster.stop, "fast")
        try:
            during = await eventually(lambda: rcpt(port, "outage@vault.test"), "451")
            assert during.startswith("451 4.3.0"), during
        finally:
            await asyncio.to_thread(private_cluster.cluster.start)
        after = await eventually(lambda: rcpt(port, "outage@vault.test"), "250")
        assert after.startswith("250"), after


async def test_a_change_made_while_the_listener_was_away_is_not_missed(
    databases: Databases, admin: asyncpg.Connection, tmp_path: Path
):
    box = await vaultbox_with_certificate(databases, "away@vault.test", tmp_path)
    async with serving(databases) as port:
        listener = await listening(databases)
        for _ in range(2):
            assert (await rcpt(port, "away@vault.test")).startswith("250")
        # The change commits while nobody LISTENs: its NOTIFY reaches no one.
        await admin.execute("SELECT pg_terminate_backend($1, 5000)", listener)
        await admin.execute("UPDATE vaultboxes SET status = 'suspended' WHERE id = $1", box.id)
        await listening(databases, other_than=listener)
        refused = await rcpt(port, "away@vault.test")
        assert refused.startswith("550 5.2.1"), refused
