"""IDLE wake-up shares one query per mailbox change among the sessions that have the mailbox
selected (encimap.imap.shared), and every session still sees exactly what changed."""

from __future__ import annotations

import asyncio

import pytest

from encimap.store import events, messages
from tests.imap_support import RawClient, imap_config, make_box, ports, running_imap, store

SESSIONS = 30


@pytest.fixture
def cfg(databases, tls_files):
    return imap_config(databases, tls_files, max_connections_per_user=SESSIONS + 5)


async def test_one_query_per_change_for_all_idle_sessions(
    databases, cfg, tls_ca, tmp_path, monkeypatch
):
    box = await make_box(databases, "shared@example.test", tmp_path)
    await store(databases, box, b"Subject: first\r\n\r\nbody\r\n")
    queries = {"new": 0, "flags": 0}
    real_new, real_rows = messages.uids_and_flags, messages.fetch_rows

    async def counting_new(db, mailbox_id, after_uid=0):
        if after_uid:
            queries["new"] += 1
        return await real_new(db, mailbox_id, after_uid)

    async def counting_rows(db, mailbox_id, uids, columns):
        if "flags" in columns:
            queries["flags"] += 1
        return await real_rows(db, mailbox_id, uids, columns)

    monkeypatch.setattr(messages, "uids_and_flags", counting_new)
    monkeypatch.setattr(messages, "fetch_rows", counting_rows)
    barriers = 0
    real_barrier = events.Listener.barrier

    async def counting_barrier(self):
        nonlocal barriers
        barriers += 1
        return await real_barrier(self)

    monkeypatch.setattr(events.Listener, "barrier", counting_barrier)
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        clients = [await RawClient.connect(tls_port, tls_ca) for _ in range(SESSIONS)]
        try:
            for client in clients:
                await client.login(box)
                await client.command("S", "SELECT INBOX")
                await client.send(b"I IDLE\r\n")
                assert (await client.line()).startswith(b"+ ")
            barriers = 0
            inserted = await store(databases, box, b"Subject: second\r\n\r\nbody\r\n")
            seen = await asyncio.gather(*(client.line() for client in clients))
            assert seen == [b"* 2 EXISTS\r\n"] * SESSIONS
            # the new message is \Recent in exactly one session (RFC 3501 2.3.2)
            recent = await asyncio.gather(*(_after_recent(client) for client in clients))
            assert recent.count(True) == 1, recent
            conn = await databases.connect()
            try:
                await messages.store_flags(
                    conn,
                    vaultbox_id=box.id,
                    mailbox_id=inserted.mailbox_id,
                    uids=[inserted.uid],
                    mode="add",
                    flags=["\\Flagged"],
                    origin="elsewhere",
                )
            finally:
                await conn.close()
            seen = await asyncio.gather(*(client.line() for client in clients))
            assert [line.replace(b" \\Recent", b"") for line in seen] == [
                b"* 2 FETCH (UID 2 FLAGS (\\Flagged))\r\n"
            ] * SESSIONS
            assert sum(b"\\Recent" in line for line in seen) == 1, seen
            # the idling sessions were reported together: one wait for the listener per
            # change, not one per session
            assert 2 <= barriers <= 4, barriers
            for client in clients:
                await client.send(b"DONE\r\n")
                assert (await client.until("I"))[-1].startswith(b"I OK")
        finally:
            for client in clients:
                await client.close()
    # All sessions woke together and shared the reads (a straggler may ask once more).
    assert 1 <= queries["new"] <= 2, queries
    assert 1 <= queries["flags"] <= 2, queries


async def _after_recent(client: RawClient) -> bool:
    """Whether the session reports a RECENT count (the one that has the new message as
    \\Recent does, right after EXISTS); reads that line if so."""
    try:
        line = await asyncio.wait_for(client.reader.readline(), 2)
    except TimeoutError:
        return False
    assert line.startswith(b"* ") and line.endswith(b" RECENT\r\n"), line
    return True
