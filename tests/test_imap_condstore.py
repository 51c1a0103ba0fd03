"""CONDSTORE and QRESYNC (RFC 7162) over real sockets: mod-sequences in FETCH, STORE, SEARCH and
STATUS; a second session resynchronising with CHANGEDSINCE and SELECT QRESYNC gets exactly what
the first changed and expunged; unsolicited updates carry MODSEQ and VANISHED; concurrent
writers never share or reorder a mailbox's mod-sequences."""

from __future__ import annotations

import asyncio
import re

import asyncpg
import pytest

from encimap.imap import shared
from encimap.imap.commands import condstore
from encimap.store import mailboxes, messages, modseqs
from tests import dovecot_support, test_imap_protocol
from tests.imap_support import (
    RawClient,
    imap_config,
    login,
    make_box,
    ports,
    running_imap,
    store,
)

_MODSEQ = re.compile(rb"MODSEQ \((\d+)\)")


def _message(number: int) -> bytes:
    return (
        f"From: a@example.org\r\nTo: b@example.org\r\nSubject: m{number}\r\n"
        f"Message-ID: <m{number}@example.org>\r\n\r\nbody {number}\r\n"
    ).encode()


@pytest.fixture
def cfg(databases, tls_files):
    return imap_config(databases, tls_files)


async def _box(databases, tmp_path, name: str, count: int):
    box = await make_box(databases, f"{name}@example.test", tmp_path)
    for number in range(1, count + 1):
        await store(databases, box, _message(number))
    return box


async def _client(cfg, tls_ca, box) -> RawClient:
    client = await RawClient.connect(ports(cfg)[1], tls_ca)
    await client.login(box)
    return client


def _code(lines: list[bytes], name: bytes) -> int:
    for line in lines:
        found = re.search(rb"\[" + name + rb" (\d+)\]", line)
        if found:
            return int(found[1])
    raise AssertionError(f"no {name!r} in {lines!r}")


def _fetches(lines: list[bytes]) -> dict[int, bytes]:
    """UID -> the FETCH line that names it."""
    found = {}
    for line in lines:
        uid = re.search(rb"FETCH \(.*\bUID (\d+)", line)
        if uid:
            found[int(uid[1])] = line
    return found


async def test_modseq_in_fetch_store_search_and_status(databases, cfg, tls_ca, tmp_path):
    """imaplib: the capability, ENABLE, HIGHESTMODSEQ at SELECT, MODSEQ of FETCH and STORE,
    STATUS HIGHESTMODSEQ, SEARCH MODSEQ, and a row stored before mod-sequences read as 1."""
    box = await _box(databases, tmp_path, "modseq", 3)

    def before(client) -> int:
        typ, caps = client.capability()
        assert b"CONDSTORE" in caps[0].split() and b"QRESYNC" in caps[0].split()
        typ, data = client._simple_command("ENABLE", "CONDSTORE")
        assert typ == "OK" and client.untagged_responses.pop("ENABLED") == [b"CONDSTORE"]
        typ, _ = client.select("INBOX")
        highest = int(client.untagged_responses["HIGHESTMODSEQ"][-1])
        typ, data = client.fetch("1:3", "(MODSEQ)")
        first = [int(_MODSEQ.search(line)[1]) for line in data]
        assert first == sorted(first) and max(first) == highest
        typ, data = client.store("2", "+FLAGS", "(\\Flagged)")
        stored = int(_MODSEQ.search(data[0])[1])
        assert stored == highest + 1 and b"\\Flagged" in data[0]
        typ, data = client.uid("SEARCH", f"MODSEQ {stored}")
        assert data == [f"2 (MODSEQ {stored})".encode()]
        typ, data = client.search(None, "MODSEQ", f"{stored + 1}")
        assert data == [b""]
        typ, data = client.status("INBOX", "(MESSAGES HIGHESTMODSEQ)")
        assert data == [f"INBOX (MESSAGES 3 HIGHESTMODSEQ {stored})".encode()]
        return stored

    def after(client) -> None:
        _typ, data = client.fetch("1", "(MODSEQ)")
        assert data == [b"1 (MODSEQ (1))"]
        client.logout()

    async with running_imap(cfg):
        client = await asyncio.to_thread(login, ports(cfg)[0], tls_ca, box)
        await asyncio.to_thread(before, client)
        conn = await databases.connect()
        try:  # as if stored before the migration (the column is NULL)
            inbox = await mailboxes.find_mailbox(conn, box.id, "INBOX")
            await conn.execute(
                "UPDATE encrypted_emails SET modseq = NULL WHERE mailbox_id = $1 AND uid = 1",
                inbox.id,
            )
        finally:
            await conn.close()
        await asyncio.to_thread(after, client)


async def test_store_unchangedsince_reports_modified(databases, cfg, tls_ca, tmp_path):
    box = await _box(databases, tmp_path, "unchanged", 4)
    async with running_imap(cfg):
        a = await _client(cfg, tls_ca, box)
        reply = await a.command("s", "SELECT INBOX (CONDSTORE)")
        highest = _code(reply, b"HIGHESTMODSEQ")
        reply = await a.command("f", "STORE 2 +FLAGS (\\Seen)")
        changed = int(_MODSEQ.search(reply[0])[1])
        assert changed > highest
        # 2 changed after `highest`: left alone and named; 1, 3 and 4 stored.
        reply = await a.command("c", f"STORE 1:4 (UNCHANGEDSINCE {highest}) +FLAGS (\\Answered)")
        assert reply[-1].startswith(b"c OK [MODIFIED 2]"), reply
        updated = [line for line in reply if b"FETCH" in line]
        assert [line.split()[1] for line in updated] == [b"1", b"3", b"4"]
        assert all(b"\\Answered" in line and b"MODSEQ (" in line for line in updated)
        reply = await a.command(
            "u", f"UID STORE 2 (UNCHANGEDSINCE {changed}) -FLAGS.SILENT (\\Seen)"
        )
        assert reply[0].startswith(b"* 2 FETCH (UID 2 MODSEQ (") and reply[-1].startswith(b"u OK")
        reply = await a.command("z", "UID STORE 1:4 (UNCHANGEDSINCE 0) +FLAGS (\\Draft)")
        assert reply == [b"z OK [MODIFIED 1:4] Conditional store failed.\r\n"]
        await a.close()


async def test_changedsince_and_qresync_report_exactly_what_another_session_did(
    databases, cfg, tls_ca, tmp_path
):
    box = await _box(databases, tmp_path, "resync", 8)
    async with running_imap(cfg):
        b = await _client(cfg, tls_ca, box)
        await b.command("e", "ENABLE QRESYNC")
        reply = await b.command("s", "SELECT INBOX")
        uidvalidity, known = _code(reply, b"UIDVALIDITY"), _code(reply, b"HIGHESTMODSEQ")
        await b.close()  # B goes offline, A changes things

        a = await _client(cfg, tls_ca, box)
        await a.command("s", "SELECT INBOX")
        for command in (
            "UID STORE 2 +FLAGS.SILENT (\\Seen)",
            "UID STORE 5 +FLAGS.SILENT ($Important)",
            "UID STORE 3,7 +FLAGS.SILENT (\\Deleted)",
            "EXPUNGE",
            "UID STORE 2 +FLAGS.SILENT (\\Flagged)",
        ):
            assert (await a.command("a", command))[-1].startswith(b"a OK")
        await a.close()
        await store(databases, box, _message(9))  # a delivery: UID 9, new

        # CONDSTORE: FETCH CHANGEDSINCE answers the changed messages only
        b = await _client(cfg, tls_ca, box)
        reply = await b.command("s", "SELECT INBOX (CONDSTORE)")
        newest = _code(reply, b"HIGHESTMODSEQ")
        assert newest > known
        reply = await b.command("f", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {known})")
        changed = _fetches(reply)
        assert sorted(changed) == [2, 5, 9], reply
        assert b"\\Flagged" in changed[2] and b"\\Seen" in changed[2]
        assert b"$Important" in changed[5]
        assert all(b"MODSEQ (" in line for line in changed.values())
        assert max(int(_MODSEQ.search(line)[1]) for line in changed.values()) == newest
        reply = await b.command("g", f"FETCH 1:3 (FLAGS) (CHANGEDSINCE {known})")
        assert list(_fetches(reply)) == [] and [line.split()[1] for line in reply[:-1]] == [b"2"]
        reply = await b.command("n", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {newest})")
        assert reply[-1].startswith(b"n OK") and len(reply) == 1
        reply = await b.command("v", f"UID FETCH 1:* FLAGS (CHANGEDSINCE {known} VANISHED)")
        assert reply[-1].startswith(b"v BAD"), reply  # needs ENABLE QRESYNC
        await b.close()

        # QRESYNC: one SELECT brings VANISHED (EARLIER) and the changed flags
        b = await _client(cfg, tls_ca, box)
        assert (await b.command("e", "ENABLE QRESYNC"))[0] == b"* ENABLED QRESYNC\r\n"
        reply = await b.command("q", f"SELECT INBOX (QRESYNC ({uidvalidity} {known} 1:8))")
        assert reply[-1].startswith(b"q OK [READ-WRITE]"), reply
        assert b"* VANISHED (EARLIER) 3,7\r\n" in reply
        assert sorted(_fetches(reply)) == [2, 5]  # 9 is new: above the known UIDs
        # the known UIDs limit what is reported
        reply = await b.command("r", f"EXAMINE INBOX (QRESYNC ({uidvalidity} {known} 1:5))")
        assert reply[0] == b"* OK [CLOSED] Previous mailbox closed.\r\n"
        assert b"* VANISHED (EARLIER) 3\r\n" in reply and sorted(_fetches(reply)) == [2, 5]
        # another UIDVALIDITY: nothing beyond a plain SELECT
        reply = await b.command("w", f"SELECT INBOX (QRESYNC ({uidvalidity + 1} {known}))")
        assert not any(b"VANISHED" in line or b"FETCH" in line for line in reply)
        reply = await b.command("x", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {known} VANISHED)")
        assert reply[0] == b"* VANISHED (EARLIER) 3,7\r\n" and sorted(_fetches(reply)) == [2, 5, 9]
        await b.close()

        c = await _client(cfg, tls_ca, box)
        reply = await c.command("q", f"SELECT INBOX (QRESYNC ({uidvalidity} {known}))")
        assert reply[-1].startswith(b"q BAD"), reply  # QRESYNC not enabled
        await c.close()


async def test_unsolicited_updates_carry_modseq_and_vanished(databases, cfg, tls_ca, tmp_path):
    box = await _box(databases, tmp_path, "unsolicited", 4)
    async with running_imap(cfg):
        a = await _client(cfg, tls_ca, box)
        await a.command("s", "SELECT INBOX")
        b = await _client(cfg, tls_ca, box)
        await b.command("e", "ENABLE QRESYNC")
        await b.command("s", "SELECT INBOX")
        c = await _client(cfg, tls_ca, box)
        await c.command("e", "ENABLE CONDSTORE")
        await c.command("s", "SELECT INBOX")

        reply = await a.command("a", "STORE 2 +FLAGS (\\Flagged)")
        assert b"MODSEQ" not in reply[0]  # A enabled nothing
        # as Dovecot: UID only once QRESYNC is enabled
        reply = await b.command("n", "NOOP")
        flagged = rb" MODSEQ \(\d+\) FLAGS \(\\Flagged\)\)\r\n"
        assert re.fullmatch(rb"\* 2 FETCH \(UID 2" + flagged, reply[0])
        reply = await c.command("n", "NOOP")
        assert re.fullmatch(rb"\* 2 FETCH \(" + flagged[1:], reply[0])
        # IDLE reports it the same way
        await b.send(b"i IDLE\r\n")
        assert (await b.line()).startswith(b"+ ")
        await a.command("a", "STORE 3 +FLAGS.SILENT (\\Deleted)")
        assert re.fullmatch(
            rb"\* 3 FETCH \(UID 3 MODSEQ \(\d+\) FLAGS \(\\Deleted\)\)\r\n", await b.line()
        )
        reply = await a.command("x", "EXPUNGE")
        assert reply[0] == b"* 3 EXPUNGE\r\n" and reply[-1] == b"x OK Expunge completed.\r\n"
        assert await b.line() == b"* VANISHED 3\r\n"
        await b.send(b"DONE\r\n")
        assert (await b.until("i"))[-1].startswith(b"i OK")
        reply = await c.command("n", "NOOP")
        assert reply[0] == b"* 3 EXPUNGE\r\n"
        # B's own expunge: VANISHED, and the tagged OK names the new HIGHESTMODSEQ
        await b.command("d", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        reply = await b.command("x", "EXPUNGE")
        assert reply[0] == b"* VANISHED 1\r\n"
        highest = _code(reply, b"HIGHESTMODSEQ")
        reply = await c.command("t", "STATUS INBOX (HIGHESTMODSEQ)")
        assert reply[0] == f"* STATUS INBOX (HIGHESTMODSEQ {highest})\r\n".encode()
        for client in (a, b, c):
            await client.close()


async def test_search_modseq_with_esearch(databases, cfg, tls_ca, tmp_path):
    box = await _box(databases, tmp_path, "esearch", 4)
    async with running_imap(cfg):
        a = await _client(cfg, tls_ca, box)
        await a.command("e", "ENABLE CONDSTORE")
        await a.command("f", "SELECT INBOX")
        stamps = {}
        for seq in (1, 3, 2):
            reply = await a.command("s", f"STORE {seq} +FLAGS (\\Seen)")
            stamps[seq] = int(_MODSEQ.search(reply[0])[1])
        reply = await a.command("a", 'SEARCH RETURN (MIN) 1:3 MODSEQ "/flags/\\\\seen" all 1')
        assert reply[0] == f'* ESEARCH (TAG "a") MIN 1 MODSEQ {stamps[1]}\r\n'.encode()
        reply = await a.command("b", "SEARCH RETURN (MIN MAX) 1:3 MODSEQ 1")
        assert reply[0] == f'* ESEARCH (TAG "b") MIN 1 MAX 3 MODSEQ {stamps[3]}\r\n'.encode()
        reply = await a.command("c", f"SEARCH RETURN (ALL) MODSEQ {stamps[2] + 1}")
        assert reply[0] == b'* ESEARCH (TAG "c")\r\n'
        await a.close()


async def test_modseq_increases_under_concurrent_writers(databases, cfg, tls_ca, tmp_path):
    """Sessions storing, expunging and appending, and deliveries, all at once: no NO, no
    deadlock; every transaction took its own mod-sequence, each later than the last."""
    box = await _box(databases, tmp_path, "concurrent", 30)
    async with running_imap(cfg):
        clients = [await _client(cfg, tls_ca, box) for _ in range(4)]
        for client in clients:
            await client.command("e", "ENABLE CONDSTORE")
            await client.command("s", "SELECT INBOX")

        async def work(index: int, client: RawClient) -> tuple[list[bytes], list[int]]:
            failures: list[bytes] = []
            seen: list[int] = []
            for round_ in range(12):
                commands = [
                    f"STORE 1:* +FLAGS.SILENT (k{index})",
                    f"STORE {round_ % 5 + 1}:* +FLAGS.SILENT (\\Deleted)",
                    "UID EXPUNGE 1:*",
                    f"STORE 1:* -FLAGS.SILENT (k{index})",
                ]
                for command in commands:
                    reply = await client.command("w", command)
                    if not reply[-1].startswith(b"w OK"):
                        failures.append(reply[-1])
                    if "STORE" in command:
                        # its own responses (`FETCH (MODSEQ (m))` of .SILENT), not those about
                        # other sessions' changes (with FLAGS)
                        own = [line for line in reply if b"FETCH" in line and b"FLAGS" not in line]
                        stamps = {int(m[1]) for m in map(_MODSEQ.search, own) if m}
                        assert len(stamps) <= 1, reply  # one mod-sequence per transaction
                        seen.extend(stamps)
                message = _message(100 + round_)
                reply = await client.command(
                    "p", b"APPEND INBOX {%d+}\r\n" % len(message) + message
                )
                if not reply[-1].startswith(b"p OK"):
                    failures.append(reply[-1])
            return failures, seen

        async def deliver() -> None:
            for number in range(20):
                await store(databases, box, _message(200 + number))

        results, _ = await asyncio.gather(
            asyncio.gather(*(work(i, c) for i, c in enumerate(clients))), deliver()
        )
        assert [failure for failures, _ in results for failure in failures] == []
        for _, seen in results:
            assert seen == sorted(set(seen)), seen  # strictly increasing for each session
        every = [stamp for _, seen in results for stamp in seen]
        assert len(every) == len(set(every))  # no two transactions shared one
        reply = await clients[0].command("t", "STATUS INBOX (HIGHESTMODSEQ)")
        highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", reply[0])[1])
        assert highest >= max(every)
        reply = await clients[0].command("f", "FETCH 1:* (MODSEQ)")
        assert max(int(m[1]) for m in map(_MODSEQ.search, reply) if m) <= highest
        for client in clients:
            await client.close()


def _modseqs_hidden(reply: list[bytes]) -> list[bytes]:
    """The reply with every mod-sequence number as `n` (the two servers count differently)."""
    return test_imap_protocol.normalised(
        [re.sub(rb"((?:HIGHEST)?MODSEQ \(?)\d+", rb"\1n", line) for line in reply]
    )


@pytest.mark.skipif(
    dovecot_support.available() is not None, reason=str(dovecot_support.available())
)
async def test_replies_match_dovecot(databases, tls_files, tls_ca, tmp_path):
    """The same session against Dovecot and encimap: the same responses, item order included,
    but for the mod-sequence numbers (each server's own values go into the commands)."""
    bodies = [_message(n) for n in range(1, 7)]
    async with test_imap_protocol.servers(
        databases, tls_files, tls_ca, tmp_path, "cdovecot@example.test", bodies
    ) as pair:
        a, b = await pair.connect(), await pair.connect()
        known: list[dict[str, int]] = []

        async def same(index: int, command: str) -> list[list[bytes]]:
            """`command` formatted with each server's values on each; the replies."""
            replies = []
            for client, values in zip(pair.clients[index], known or [{}, {}], strict=True):
                replies.append(await client.command("t", command.format(**values)))
            theirs, ours = replies
            assert _modseqs_hidden(ours) == _modseqs_hidden(theirs), (command, theirs, ours)
            return replies

        for command in ("ENABLE QRESYNC", "SELECT INBOX"):
            replies = await same(b, command)
        known.extend(
            {"v": _code(r, b"UIDVALIDITY"), "m": _code(r, b"HIGHESTMODSEQ")} for r in replies
        )
        for index, command in [
            (b, "STORE 1 +FLAGS (\\Seen)"),
            (b, "UNSELECT"),
            (a, "ENABLE CONDSTORE"),
            (a, "SELECT INBOX"),
            (a, "FETCH 1:3 (MODSEQ)"),
            (a, "UID STORE 3 +FLAGS (\\Flagged)"),
            (a, "STORE 2 +FLAGS.SILENT (\\Answered)"),
            (a, "STORE 4,5 +FLAGS.SILENT (\\Deleted)"),
            (a, "UID EXPUNGE 4"),
            (a, "SEARCH MODSEQ {m}"),
            (b, "SELECT INBOX (QRESYNC ({v} {m} 1:6 (1:6 1:6)))"),
            (b, "UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE {m})"),
            (b, "FETCH 1:* (FLAGS) (CHANGEDSINCE {m})"),
            (b, "UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m} VANISHED)"),
            (b, "UID SEARCH RETURN (ALL MIN) MODSEQ {m}"),
            (b, "UID STORE 1:6 (UNCHANGEDSINCE {m}) +FLAGS.SILENT (\\Draft)"),
            (a, "NOOP"),
            (a, "EXPUNGE"),
            (b, "NOOP"),
            (b, "STORE 6 +FLAGS.SILENT (\\Deleted)"),
            (b, "EXPUNGE"),
            (b, "UID STORE 6 +FLAGS.SILENT (\\Deleted)"),
            (b, "EXPUNGE"),
            (a, "NOOP"),
            (b, "EXAMINE INBOX (CONDSTORE)"),
        ]:
            await same(index, command)


async def test_vanished_stays_bounded_and_complete(databases, tmp_path):
    """200 expunges, one message each: the mailbox keeps at most 129 rows of expunged UIDs, and
    what vanished after any mod-sequence is always reported (merged rows may add earlier ones,
    never lose any)."""
    box = await make_box(databases, "vanished@example.test", tmp_path)
    conn = await databases.connect()
    try:
        inbox = await mailboxes.find_mailbox(conn, box.id, "INBOX")
        await conn.execute(
            """INSERT INTO encrypted_emails (vaultbox_id, mailbox_id, uid, message_id, sender,
                                             recipient, body, size_bytes)
               SELECT $1, $2, g, 'm', 's', 'r', '\\x00', 1 FROM generate_series(1, 400) g""",
            box.id,
            inbox.id,
        )
        await conn.execute("UPDATE mailboxes SET uid_next = 401 WHERE id = $1", inbox.id)
        stamps = {}  # UID -> the mod-sequence of its expunge
        for uid in range(2, 402, 2):
            await messages.store_flags(
                conn,
                vaultbox_id=box.id,
                mailbox_id=inbox.id,
                uids=[uid],
                mode="add",
                flags=["\\Deleted"],
                origin="test",
            )
            gone = await messages.expunge(
                conn, vaultbox_id=box.id, mailbox_id=inbox.id, origin="test", uids=[uid]
            )
            assert gone == [uid]
            stamps[uid] = await modseqs.highest(conn, inbox.id)
        rows = await conn.fetchval(
            "SELECT count(*) FROM mailbox_vanished WHERE mailbox_id = $1", inbox.id
        )
        assert rows <= 129
        for since in (0, stamps[100], stamps[300], stamps[398], stamps[400]):
            reported = {
                uid
                for low, high in await modseqs.vanished_since(conn, inbox.id, since)
                for uid in range(low, high + 1)
            }
            exact = {uid for uid, stamp in stamps.items() if stamp > since}
            assert exact <= reported <= set(stamps), since
        # the newest expunges are exact
        assert await modseqs.vanished_since(conn, inbox.id, stamps[398]) == [(400, 400)]
    finally:
        await conn.close()


async def test_a_qresync_select_that_fails_midway_leaves_nothing_selected(
    databases, cfg, tls_ca, tmp_path, monkeypatch
):
    box = await _box(databases, tmp_path, "midway", 3)
    conn = await databases.connect()
    try:
        mailbox_id = (await mailboxes.find_mailbox(conn, box.id, "INBOX")).id
    finally:
        await conn.close()
    failures = []

    async def database_gone(*_args, **_kwargs):
        failures.append(1)
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")

    async with running_imap(cfg):
        client = await _client(cfg, tls_ca, box)
        await client.command("e", "ENABLE QRESYNC")
        uidvalidity = _code(await client.command("s", "SELECT INBOX"), b"UIDVALIDITY")
        assert mailbox_id in shared.selected_mailboxes()
        monkeypatch.setattr(condstore.modseqs, "changed_since", database_gone)
        reply = await client.command("q", f"SELECT INBOX (QRESYNC ({uidvalidity} 1))")
        assert failures and reply[-1].startswith(b"q NO [UNAVAILABLE]"), reply
        # the view the failed SELECT built is released, and the session is not in SELECTED
        assert mailbox_id not in shared.selected_mailboxes()
        assert (await client.command("n", "FETCH 1 FLAGS"))[-1].startswith(b"n BAD")
        await client.close()
