"""SELECT and the flag resync of a large mailbox (encimap.store.flagsync), through imaplib:
the numbers and flags are exact (gaps from expunges, keywords, a message expunged by another
session and not yet reported), and the selected mailbox holds 4 bytes per message."""

from __future__ import annotations

import asyncio

import pytest

from encimap.imap.commands import fetch
from encimap.store import flagsync, mailboxes, messages
from tests.imap_support import (
    RawClient,
    imap_config,
    login,
    make_box,
    ports,
    running_imap,
    store_mail,
)

MESSAGES = 20_000


@pytest.fixture
def cfg(databases, tls_files):
    return imap_config(databases, tls_files)


async def _fill(databases, box) -> int:
    """MESSAGES rows in the INBOX through SQL, every third \\Seen, some with a keyword; then
    every 7th expunged, so UIDs have gaps. Returns the INBOX id."""
    conn = await databases.connect()
    try:
        inbox = (await mailboxes.find_mailbox(conn, box.id, "INBOX")).id
        await conn.execute(
            r"""INSERT INTO encrypted_emails (vaultbox_id, mailbox_id, uid, message_id, sender,
                                              recipient, body, size_bytes, flags)
                SELECT $1, $2, g, 'm', 's', 'r', '\x00', 1,
                       CASE WHEN g = 1 THEN ARRAY['\Flagged']
                            WHEN g % 3 = 0 THEN ARRAY['\Seen']
                            WHEN g % 1000 = 0 THEN ARRAY['$Junk', '\Seen']
                            ELSE '{}' END
                  FROM generate_series(1, $3::int) g""",
            box.id,
            inbox,
            MESSAGES,
        )
        await conn.execute("UPDATE mailboxes SET uid_next = $2 + 1 WHERE id = $1", inbox, MESSAGES)
        await conn.execute(
            "DELETE FROM encrypted_emails WHERE mailbox_id = $1 AND uid % 7 = 0", inbox
        )
        return inbox
    finally:
        await conn.close()


async def test_select_and_flag_resync_of_a_large_mailbox(
    databases, cfg, tls_ca, tmp_path, monkeypatch
):
    """The flag resync of the session that holds every message as \\Recent is rendered by
    PostgreSQL too: no FETCH here reads rows one object per message (fetch.message_rows)."""
    box = await make_box(databases, "flagsync@example.test", tmp_path)
    inbox = await _fill(databases, box)
    present = [uid for uid in range(1, MESSAGES + 1) if uid % 7]
    port, _ = ports(cfg)

    def expected_flags(uid: int) -> str:
        if uid == 1:
            return "\\Flagged"
        if uid % 3 == 0:
            return "\\Seen"
        if uid % 1000 == 0:
            return "$Junk \\Seen"
        return ""

    def recent(flags: str) -> str:
        return f"{flags} \\Recent".lstrip()

    def client_side(gone: asyncio.Future | None = None) -> None:
        client = login(port, tls_ca, box)
        typ, data = client.select("INBOX")
        assert typ == "OK" and data == [str(len(present)).encode()]
        assert b"$Junk" in client.untagged_responses["FLAGS"][0]
        # UID 1 is \Flagged, not \Seen: the first unseen message.
        assert client.response("UNSEEN") == ("UNSEEN", [b"1"])
        # Another session expunges UID 2 (not reported to this one during FETCH).
        asyncio.run_coroutine_threadsafe(expunge_two(), loop).result()
        typ, data = client.uid("FETCH", "1:*", "(UID FLAGS)")
        assert typ == "OK"
        lines = [line.decode() for line in data]
        # This session is the first to select the mailbox: every message is \Recent in it.
        expected = [
            f"{seq} (UID {uid} FLAGS ({recent(expected_flags(uid))}))"
            for seq, uid in enumerate(present, 1)
            if uid != 2
        ]
        assert lines == expected
        # The EXPUNGE was reported after that FETCH: sequence numbers moved down by one.
        assert client.untagged_responses.get("EXPUNGE") == [b"2"]
        now = [uid for uid in present if uid != 2]
        typ, data = client.fetch("3:5", "(FLAGS UID)")
        assert [line.decode() for line in data] == [
            f"{seq} (FLAGS ({recent(expected_flags(now[seq - 1]))}) UID {now[seq - 1]})"
            for seq in (3, 4, 5)
        ]
        typ, data = client.uid("SEARCH", "UNSEEN")
        unseen = [u for u in present if u != 2 and "\\Seen" not in expected_flags(u)]
        assert [int(n) for n in data[0].split()] == unseen
        client.logout()

    async def expunge_two() -> None:
        conn = await databases.connect()
        try:
            await messages.store_flags(
                conn,
                vaultbox_id=box.id,
                mailbox_id=inbox,
                uids=[2],
                mode="add",
                flags=["\\Deleted"],
                origin="other",
            )
            assert await messages.expunge(
                conn, vaultbox_id=box.id, mailbox_id=inbox, origin="other"
            ) == [2]
        finally:
            await conn.close()

    row_reads: list[int] = []

    async def counted_rows(session, uids, columns):
        row_reads.append(len(uids))
        return await rows(session, uids, columns)

    rows = fetch.message_rows
    monkeypatch.setattr(fetch, "message_rows", counted_rows)
    loop = asyncio.get_running_loop()
    async with running_imap(cfg):
        await asyncio.to_thread(client_side)
    assert row_reads == []


async def test_selected_mailbox_holds_four_bytes_per_message(databases, tmp_path):
    box = await make_box(databases, "packed@example.test", tmp_path)
    inbox = await _fill(databases, box)
    conn = await databases.connect()
    try:
        summary = await flagsync.select(conn, box.id, "inbox", claim_recent=False)
        edges = await conn.fetchval("SELECT array_send(ARRAY[4294967294, 1, 2]::bigint[])")
        empty = await conn.fetchval("SELECT array_send('{}'::bigint[])")
    finally:
        await conn.close()
    assert summary is not None and summary.mailbox.id == inbox
    assert summary.uids.itemsize == 4
    assert list(summary.uids) == [uid for uid in range(1, MESSAGES + 1) if uid % 7]
    assert summary.keywords == ["$Junk"] and summary.first_unseen_uid == 1
    assert flagsync.packed_uids(edges).tolist() == [2**32 - 2, 1, 2]
    assert flagsync.packed_uids(empty).tolist() == []


async def test_a_flag_resync_announces_a_keyword_before_naming_it(databases, cfg, tls_ca, tmp_path):
    """Another session set a new keyword just before: the resync (rendered by PostgreSQL)
    sends FLAGS with it before the first FETCH response that names it (RFC 3501 7.2.6)."""
    box = await make_box(databases, "keywords@example.test", tmp_path)
    await store_mail(databases, box, 3)
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        reader, changer = [await RawClient.connect(tls_port, tls_ca) for _ in "rc"]
        for client in (reader, changer):
            await client.login(box)
            await client.command("s", "SELECT INBOX")
        reply = await changer.command("k", "STORE 2 +FLAGS.SILENT ($Project)")
        assert reply[-1].startswith(b"k OK"), reply
        reply = await reader.command("f", "UID FETCH 1:* (UID FLAGS)")
        naming = [n for n, line in enumerate(reply) if b"FETCH" in line and b"$Project" in line]
        announcing = [n for n, line in enumerate(reply) if line.startswith(b"* FLAGS (")]
        assert naming and announcing and announcing[0] < naming[0], reply
        assert b"$Project" in reply[announcing[0]], reply
        for client in (reader, changer):
            await client.close()
