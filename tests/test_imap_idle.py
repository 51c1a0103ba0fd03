"""Sessions learn about other sessions' changes: IDLE woken by an LMTP delivery through the
intake, flag changes and expunges reported to a second session at the allowed moments."""

from __future__ import annotations

import asyncio
import time

import aioimaplib
import pytest

from encimap.pgcluster import free_port
from tests.imap_support import (
    RawClient,
    client_context,
    encrypt_for,
    imap_config,
    make_box,
    plain_message,
    ports,
    running_imap,
    store,
    store_mail,
)
from tests.intake_support import LMTPClient, port_of, running_intake
from tests.service_support import running_service
from tests.support import make_config


@pytest.fixture
def cfg(databases, tls_files):
    return imap_config(databases, tls_files)


async def test_idle_reports_an_lmtp_delivery_within_a_second(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "idler@example.test", tmp_path)
    await store(databases, box, encrypt_for(box, plain_message(1)))
    intake_cfg = make_config(
        databases,
        intake={"listen": f"127.0.0.1:{free_port()}", "hostname": "mx.test"},
        metrics={"intake": ""},
    )
    _, tls_port = ports(cfg)
    async with running_imap(cfg), running_intake(intake_cfg):
        client = aioimaplib.IMAP4_SSL("127.0.0.1", tls_port, ssl_context=client_context(tls_ca))
        await client.wait_hello_from_server()
        await client.login(box.username, box.password)
        await client.select("INBOX")
        idle = await client.idle_start(timeout=10)
        lmtp = await LMTPClient.connect(port_of(intake_cfg))
        assert (await lmtp.command("LHLO client.test")).startswith("250")
        rcpt, data = await lmtp.transaction(
            "someone@example.org", ["idler@example.test"], plain_message(2)
        )
        assert data and data[0].startswith("250"), (rcpt, data)
        started = time.monotonic()  # from the acknowledgement: encryption is not the push's
        pushed = await client.wait_server_push(timeout=2)
        elapsed = time.monotonic() - started
        client.idle_done()
        await asyncio.wait_for(idle, 5)
        await lmtp.close()
        await client.logout()
    assert b"2 EXISTS" in b"".join(line for line in pushed if isinstance(line, bytes)), pushed
    assert elapsed < 1.0, elapsed


async def test_two_sessions_see_each_others_flags_new_mail_and_expunges(
    databases, cfg, tls_ca, tmp_path
):
    box = await make_box(databases, "shared@example.test", tmp_path)
    await store_mail(databases, box, 3)
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        first = await RawClient.connect(tls_port, tls_ca)
        second = await RawClient.connect(tls_port, tls_ca)
        for client in (first, second):
            await client.login(box)
            await client.command("s", "SELECT INBOX")
        await first.command("a", "STORE 2 +FLAGS.SILENT (\\Flagged)")
        reply = await _noop_until(second, b"FETCH")
        assert b"* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\n" in reply, reply

        await first.command("c", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        reply = await first.command("d", "EXPUNGE")
        assert reply[0] == b"* 1 EXPUNGE\r\n"
        await store(databases, box, encrypt_for(box, plain_message(9)))
        await asyncio.sleep(0.5)  # NOTIFY arrives asynchronously (usually within milliseconds)
        # no EXPUNGE during FETCH (sequence numbers must stay put), but new mail is reported
        # (message 1 is gone from the database, so the FETCH itself returns nothing)
        reply = await second.command("e", "FETCH 1 (UID)")
        assert reply[:-1] == [b"* 4 EXISTS\r\n", b"* 1 RECENT\r\n"], reply
        reply = await second.command("f", "NOOP")
        assert reply[0] == b"* 1 EXPUNGE\r\n", reply
        reply = await second.command("g", "FETCH 1:* (UID)")
        assert [line.split(b"UID ")[1][:1] for line in reply[:-1]] == [b"2", b"3", b"4"]
        for client in (first, second):
            await client.close()


async def _noop_until(client: RawClient, wanted: bytes, timeout: float = 3.0) -> list[bytes]:
    """NOOP until a reply carries `wanted` (another session's change arrives by NOTIFY)."""
    deadline = time.monotonic() + timeout
    while True:
        reply = await client.command("b", "NOOP")
        if any(wanted in line for line in reply) or time.monotonic() > deadline:
            return reply
        await asyncio.sleep(0.05)


async def test_sessions_resynchronise_when_the_listen_connection_drops(
    databases, cfg, tls_ca, tmp_path
):
    """A change made while nobody listened (here: a row deleted without NOTIFY) still reaches
    the session: after the LISTEN connection is lost and back, it re-reads the mailbox."""
    box = await make_box(databases, "resync@example.test", tmp_path)
    await store_mail(databases, box, 2)
    _, tls_port = ports(cfg)
    conn = await databases.connect()
    try:
        async with running_imap(cfg):
            client = await RawClient.connect(tls_port, tls_ca)
            await client.login(box)
            await client.command("s", "SELECT INBOX")
            await conn.execute(
                "DELETE FROM encrypted_emails WHERE vaultbox_id = $1 AND uid = 1", box.id
            )
            assert await client.command("n", "NOOP") == [b"n OK NOOP completed.\r\n"]
            killed = await conn.fetchval(
                """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                    WHERE query = 'LISTEN "encimap_mailbox"'"""
            )
            assert killed == 1
            reply = await _noop_until(client, b"EXPUNGE", timeout=5.0)
            # after the flags of the messages it still knows (a resync reports them all)
            assert b"* 1 EXPUNGE\r\n" in reply, reply
            reply = await client.command("f", "FETCH 1:* (UID)")
            assert reply[:-1] == [b"* 1 FETCH (UID 2)\r\n"], reply
            await client.close()
    finally:
        await conn.close()


async def test_shutdown_says_bye_to_every_session_without_waiting_for_the_drain_timeout(
    databases, cfg, tls_ca, tmp_path
):
    """On SIGTERM (the stop event), a session before login, one idling and one selected each
    get `* BYE [UNAVAILABLE]` and are closed; the service does not sit out its drain timeout
    (600 s here; running_service waits 30 s for the stop)."""
    box = await make_box(databases, "down@example.test", tmp_path)
    await store_mail(databases, box, 1)
    _, tls_port = ports(cfg)
    async with running_service(cfg, "imap", drain_timeout=600) as stop:
        anonymous, idling, selected = [await RawClient.connect(tls_port, tls_ca) for _ in "aix"]
        for client in (idling, selected):
            await client.login(box)
            await client.command("S", "SELECT INBOX")
        await idling.send(b"I IDLE\r\n")
        assert (await idling.line()).startswith(b"+ ")
        stop.set()
        for client in (anonymous, idling, selected):
            rest = await asyncio.wait_for(client.reader.read(), 20)
            assert rest.startswith(b"* BYE [UNAVAILABLE] "), rest
            assert rest.endswith(b"\r\n") and rest.count(b"\r\n") == 1, rest
            await client.close()
