"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267) over real sockets: PARTIAL pages, results kept
current across two sessions (ADDTO/REMOVEFROM as another session flags, delivers and
expunges, also during IDLE), CANCELUPDATE, the per-session limit, malformed RETURN options,
and the same exchange against Dovecot."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from encimap.imap.commands import context
from encimap.store import search as search_store
from tests import dovecot_support
from tests.imap_support import (
    RawClient,
    imap_config,
    make_box,
    plain_message,
    ports,
    running_imap,
    store_mail,
)


@pytest.fixture
def cfg(databases, tls_files):
    return imap_config(databases, tls_files)


async def _sessions(cfg, tls_ca, box, count: int = 2) -> list[RawClient]:
    _, tls_port = ports(cfg)
    clients = []
    for _ in range(count):
        client = await RawClient.connect(tls_port, tls_ca)
        await client.login(box)
        reply = await client.command("s", "SELECT INBOX")
        assert reply[-1].startswith(b"s OK"), reply
        clients.append(client)
    return clients


async def _noop_until(client: RawClient, wanted: bytes, timeout: float = 5.0) -> list[bytes]:
    """NOOP until a reply carries `wanted` (another session's change arrives by NOTIFY): the
    untagged lines of every NOOP, in order."""
    deadline = time.monotonic() + timeout
    lines: list[bytes] = []
    while True:
        reply = await client.command("n", "NOOP")
        lines += reply[:-1]
        if any(wanted in line for line in reply) or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.05)


def _esearch(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if line.startswith(b"* ESEARCH")]


async def _append(client: RawClient, tag: str, flags: str, body: bytes) -> list[bytes]:
    await client.send(
        f"{tag} APPEND INBOX ({flags}) {{{len(body)}+}}\r\n".encode() + body + b"\r\n"
    )
    reply = await client.until(tag)
    assert reply[-1].startswith(f"{tag} OK".encode()), reply
    return reply


async def test_partial_pages_search_and_sort_results(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "partial@example.test", tmp_path)
    await store_mail(databases, box, 5)
    async with running_imap(cfg):
        (client,) = await _sessions(cfg, tls_ca, box, 1)
        assert b"CONTEXT=SEARCH CONTEXT=SORT" in b"".join(await client.command("c", "CAPABILITY"))
        expected = {
            "SEARCH RETURN (PARTIAL 2:3) ALL": b'* ESEARCH (TAG "a") PARTIAL (2:3 2:3)',
            "SEARCH RETURN (PARTIAL 4:2) ALL": b'* ESEARCH (TAG "a") PARTIAL (2:4 2:4)',
            "SEARCH RETURN (PARTIAL 4:9) 1:2,4:5": b'* ESEARCH (TAG "a") PARTIAL (4:9 5)',
            "SEARCH RETURN (PARTIAL 6:6) ALL": b'* ESEARCH (TAG "a") PARTIAL (6:6 NIL)',
            "SEARCH RETURN (PARTIAL 1:3) FLAGGED": b'* ESEARCH (TAG "a") PARTIAL (1:3 NIL)',
            # RFC 9394: from the end, -1 is the last result
            "SEARCH RETURN (PARTIAL -1:-2) ALL": b'* ESEARCH (TAG "a") PARTIAL (-1:-2 4:5)',
            "SEARCH RETURN (PARTIAL -4:-9) ALL": b'* ESEARCH (TAG "a") PARTIAL (-4:-9 1:2)',
            "UID SEARCH RETURN (COUNT PARTIAL 2:3) 2:5": (
                b'* ESEARCH (TAG "a") UID PARTIAL (2:3 3:4) COUNT 4'
            ),
            "SEARCH RETURN (CONTEXT) 2": b'* ESEARCH (TAG "a") ALL 2',
            "SORT RETURN (PARTIAL 1:3) (REVERSE ARRIVAL) US-ASCII ALL": (
                b'* ESEARCH (TAG "a") PARTIAL (1:3 5,4,3)'
            ),
            "UID SORT RETURN (PARTIAL 4:5 MIN) (ARRIVAL) US-ASCII ALL": (
                b'* ESEARCH (TAG "a") UID MIN 1 PARTIAL (4:5 4:5)'
            ),
        }
        for command, line in expected.items():
            reply = await client.command("a", command)
            assert reply == [line + b"\r\n", b"a OK Search completed.\r\n"] or (
                reply == [line + b"\r\n", b"a OK Sort completed.\r\n"]
            ), (command, reply)
        await client.close()


MALFORMED = [
    "SEARCH RETURN (PARTIAL 1) ALL",
    "SEARCH RETURN (PARTIAL 1:*) ALL",
    "SEARCH RETURN (PARTIAL *:1) ALL",
    "SEARCH RETURN (PARTIAL 0:3) ALL",
    "SEARCH RETURN (PARTIAL 1:-3) ALL",
    "SEARCH RETURN (PARTIAL 1:4294967296) ALL",
    "SEARCH RETURN (PARTIAL) ALL",
    "SEARCH RETURN (PARTIAL 1:2 ALL) ALL",
    "SEARCH RETURN (ALL PARTIAL 1:2) ALL",
    "SEARCH RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL",
    "SEARCH RETURN (ALL ALL) ALL",
    "SEARCH RETURN (UPDATE UPDATE) ALL",
    "SEARCH RETURN (UPDATE (FLAGS)) ALL",
    "SORT RETURN (PARTIAL 1:*) (ARRIVAL) US-ASCII ALL",
    "SORT RETURN (PARTIAL 2:1 ALL) (ARRIVAL) US-ASCII ALL",
    "CANCELUPDATE",
    "CANCELUPDATE a1",
]


async def test_malformed_return_options_are_bad(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "bad-options@example.test", tmp_path)
    await store_mail(databases, box, 2)
    async with running_imap(cfg):
        (client,) = await _sessions(cfg, tls_ca, box, 1)
        for command in MALFORMED:
            reply = await client.command("b", command)
            assert len(reply) == 1 and reply[0].startswith(b"b BAD "), (command, reply)
        # nothing was kept: a change reports no ESEARCH
        reply = await client.command("c", "STORE 1 +FLAGS.SILENT (\\Flagged)")
        assert reply == [b"c OK Store completed.\r\n"], reply
        await client.close()


async def test_updates_follow_another_sessions_flags_deliveries_and_expunges(
    databases, cfg, tls_ca, tmp_path
):
    box = await make_box(databases, "update@example.test", tmp_path)
    await store_mail(databases, box, 5)
    async with running_imap(cfg):
        watcher, changer = await _sessions(cfg, tls_ca, box)
        reply = await watcher.command("u", "SEARCH RETURN (UPDATE) FLAGGED")
        assert reply == [b'* ESEARCH (TAG "u")\r\n', b"u OK Search completed.\r\n"]
        reply = await watcher.command(
            "s", "UID SORT RETURN (UPDATE ALL) (REVERSE ARRIVAL) UTF-8 FLAGGED"
        )
        assert reply == [b'* ESEARCH (TAG "s") UID\r\n', b"s OK Sort completed.\r\n"]

        await changer.command("a", "STORE 2,4 +FLAGS.SILENT (\\Flagged)")
        lines = await _noop_until(watcher, b"ESEARCH")
        assert _esearch(lines) == [
            b'* ESEARCH (TAG "u") ADDTO (0 2,4)\r\n',
            b'* ESEARCH (TAG "s") UID ADDTO (1 4,2)\r\n',  # newest first
        ], lines

        # new mail: ADDTO after the EXISTS that makes its sequence number valid
        await _append(changer, "b", "\\Flagged", plain_message(9))
        lines = await _noop_until(watcher, b"ESEARCH")
        assert b"* 6 EXISTS\r\n" in lines, lines
        exists = lines.index(b"* 6 EXISTS\r\n")
        assert not _esearch(lines[:exists]), lines
        assert _esearch(lines[exists:]) == [
            b'* ESEARCH (TAG "u") ADDTO (0 6)\r\n',
            b'* ESEARCH (TAG "s") UID ADDTO (1 6)\r\n',
        ], lines

        # expunge: REMOVEFROM before the EXPUNGE, while sequence number 2 still names it
        await changer.command("c", "STORE 2 +FLAGS.SILENT (\\Deleted)")
        await changer.command("d", "EXPUNGE")
        lines = await _noop_until(watcher, b"EXPUNGE")
        assert _esearch(lines) == [
            b'* ESEARCH (TAG "u") REMOVEFROM (0 2)\r\n',
            b'* ESEARCH (TAG "s") UID REMOVEFROM (3 2)\r\n',
        ], lines
        assert lines.index(b"* 2 EXPUNGE\r\n") > lines.index(_esearch(lines)[-1]), lines

        # a flag cleared: UID 4 is now sequence number 3
        await changer.command("e", "UID STORE 4 -FLAGS.SILENT (\\Flagged)")
        lines = await _noop_until(watcher, b"ESEARCH")
        assert _esearch(lines) == [
            b'* ESEARCH (TAG "u") REMOVEFROM (0 3)\r\n',
            b'* ESEARCH (TAG "s") UID REMOVEFROM (2 4)\r\n',
        ], lines

        # the session's own STORE updates its contexts too
        reply = await watcher.command("f", "STORE 1 +FLAGS.SILENT (\\Flagged)")
        assert _esearch(reply) == [
            b'* ESEARCH (TAG "u") ADDTO (0 1)\r\n',
            b'* ESEARCH (TAG "s") UID ADDTO (2 1)\r\n',
        ], reply
        # the results as kept match a fresh search
        reply = await watcher.command("g", "UID SORT RETURN (ALL) (REVERSE ARRIVAL) UTF-8 FLAGGED")
        assert reply[0] == b'* ESEARCH (TAG "g") UID ALL 6,1\r\n', reply

        # and so does the \Seen its own FETCH sets
        reply = await watcher.command("h", "SEARCH RETURN (UPDATE) SEEN")
        assert reply[0] == b'* ESEARCH (TAG "h")\r\n', reply
        reply = await watcher.command("i", "FETCH 2 BODY[HEADER.FIELDS (X-NONE)]")
        assert _esearch(reply) == [b'* ESEARCH (TAG "h") ADDTO (0 2)\r\n'], reply
        for client in (watcher, changer):
            await client.close()


async def test_updates_arrive_during_idle(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "idle-update@example.test", tmp_path)
    await store_mail(databases, box, 3)
    async with running_imap(cfg):
        watcher, changer = await _sessions(cfg, tls_ca, box)
        await watcher.command("u", "UID SEARCH RETURN (UPDATE) SEEN")
        await watcher.send(b"i IDLE\r\n")
        assert await watcher.line() == b"+ idling\r\n"
        await changer.command("a", "STORE 3 +FLAGS.SILENT (\\Seen)")
        lines = []
        while not lines or not lines[-1].startswith(b"* ESEARCH"):
            lines.append(await watcher.line())
        assert lines[-1] == b'* ESEARCH (TAG "u") UID ADDTO (0 3)\r\n', lines
        await watcher.send(b"DONE\r\n")
        assert (await watcher.until("i"))[-1].startswith(b"i OK"), lines
        for client in (watcher, changer):
            await client.close()


async def test_cancelupdate_and_the_limit_of_kept_results(
    databases, cfg, tls_ca, tmp_path, monkeypatch
):
    box = await make_box(databases, "limit@example.test", tmp_path)
    await store_mail(databases, box, 3)
    limit = context.MAX_UPDATE_CONTEXTS
    async with running_imap(cfg):
        watcher, changer = await _sessions(cfg, tls_ca, box)
        for number in range(1, limit + 1):
            reply = await watcher.command(f"c{number}", "SEARCH RETURN (UPDATE COUNT) FLAGGED")
            assert reply == [
                f'* ESEARCH (TAG "c{number}") COUNT 0\r\n'.encode(),
                f"c{number} OK Search completed.\r\n".encode(),
            ], reply
        # beyond the limit: answered, with NOUPDATE, and not kept
        reply = await watcher.command("over", "SEARCH RETURN (UPDATE COUNT) FLAGGED")
        assert reply[0].startswith(b'* NO [NOUPDATE "over"] '), reply
        assert reply[1:] == [
            b'* ESEARCH (TAG "over") COUNT 0\r\n',
            b"over OK Search completed.\r\n",
        ]
        reply = await watcher.command("sorted", "SORT RETURN (UPDATE) (SIZE) UTF-8 ALL")
        assert reply[0].startswith(b'* NO [NOUPDATE "sorted"] '), reply
        # a tag already kept is BAD (RFC 5267 4.3)
        reply = await watcher.command("c1", "UID SEARCH RETURN (UPDATE) ALL")
        assert len(reply) == 1 and reply[0].startswith(b"c1 BAD "), reply

        reply = await watcher.command("x", 'CANCELUPDATE "c1" "nope"')
        assert len(reply) == 1 and reply[0].startswith(b"x NO "), reply
        reply = await watcher.command("y", 'CANCELUPDATE "c1" "c2"')
        assert reply == [b"y OK Updates cancelled.\r\n"], reply
        reply = await watcher.command("z", 'CANCELUPDATE "c1"')
        assert reply[0].startswith(b"z NO "), reply

        await changer.command("a", "STORE 2 +FLAGS.SILENT (\\Flagged)")
        lines = await _noop_until(watcher, b"ESEARCH")
        tags = [re.search(rb'TAG "([^"]+)"', line)[1] for line in _esearch(lines)]
        assert tags == [f"c{number}".encode() for number in range(3, limit + 1)], lines
        # room again for one more, but not for more sorted messages than allowed
        monkeypatch.setattr(context, "MAX_KEPT_SORTED", 2)
        reply = await watcher.command("big", "SORT RETURN (UPDATE) (SIZE) UTF-8 ALL")
        assert reply[0] == b'* NO [NOUPDATE "big"] At most 2 sorted messages are kept current\r\n'
        assert reply[1:] == [b'* ESEARCH (TAG "big")\r\n', b"big OK Sort completed.\r\n"]
        reply = await watcher.command("c9", "SORT RETURN (UPDATE) (SIZE) UTF-8 FLAGGED")
        assert not any(b"NOUPDATE" in line for line in reply), reply

        # a new SELECT ends every kept result
        await watcher.command("s", "SELECT INBOX")
        reply = await watcher.command("w", 'CANCELUPDATE "c3"')
        assert reply[0].startswith(b"w NO "), reply
        await changer.command("b", "STORE 3 +FLAGS.SILENT (\\Flagged)")
        lines = await _noop_until(watcher, b"FETCH")
        assert b"FETCH" in b"".join(lines) and not _esearch(lines), lines
        for client in (watcher, changer):
            await client.close()


async def test_an_update_searches_only_the_changed_messages(
    databases, cfg, tls_ca, tmp_path, monkeypatch
):
    box = await make_box(databases, "cheap@example.test", tmp_path)
    await store_mail(databases, box, 40)
    searched: list[list[int]] = []
    real_search = search_store.search

    async def counting_search(db, mailbox_id, key, within):
        searched.append(list(within))
        return await real_search(db, mailbox_id, key, within)

    monkeypatch.setattr(search_store, "search", counting_search)
    async with running_imap(cfg):
        watcher, changer = await _sessions(cfg, tls_ca, box)
        await watcher.command("u", "SEARCH RETURN (UPDATE) OR FLAGGED SUBJECT nothing-matches")
        await watcher.command("v", "SORT RETURN (UPDATE) (SIZE) UTF-8 FLAGGED")
        assert [len(within) for within in searched] == [40, 40]  # the first searches
        await changer.command("a", "STORE 17 +FLAGS.SILENT (\\Flagged)")
        lines = await _noop_until(watcher, b"ESEARCH")
        assert _esearch(lines) == [
            b'* ESEARCH (TAG "u") ADDTO (0 17)\r\n',
            b'* ESEARCH (TAG "v") ADDTO (1 17)\r\n',
        ], lines
        assert searched[2:] == [[17], [17]], searched
        for client in (watcher, changer):
            await client.close()


async def _exchange(watcher: RawClient, changer: RawClient, message: bytes) -> list[bytes]:
    """The same commands on any server: the watcher's ESEARCH, EXISTS and EXPUNGE lines."""
    seen: list[bytes] = []

    def keep(lines: list[bytes]) -> None:
        for line in lines:
            tagged = re.match(rb"([pu])\d (OK|NO|BAD) ", line)
            if tagged:  # the texts differ
                seen.append(tagged[0])
            elif line.startswith(b"* ESEARCH") or re.fullmatch(
                rb"\* \d+ (EXISTS|EXPUNGE)\r\n", line
            ):
                seen.append(line)

    for number, command in enumerate(
        [
            "SEARCH RETURN (PARTIAL 2:3) ALL",
            "SEARCH RETURN (PARTIAL 4:2) ALL",
            "UID SEARCH RETURN (PARTIAL 9:12) ALL",
            "SEARCH RETURN (PARTIAL 1:2 COUNT MIN) 2:5",
            "SEARCH RETURN (PARTIAL 1:*) ALL",
            "SEARCH RETURN (PARTIAL 1:2 ALL) ALL",
        ]
    ):
        keep(await watcher.command(f"p{number}", command))
    keep(await watcher.command("u1", "SEARCH RETURN (UPDATE) FLAGGED"))
    keep(await watcher.command("u2", "UID SEARCH RETURN (UPDATE ALL) UNFLAGGED"))
    await changer.command("a", "STORE 2,4 +FLAGS.SILENT (\\Flagged)")
    keep(await _noop_until(watcher, b"ESEARCH"))
    await changer.command("b", "STORE 2 +FLAGS.SILENT (\\Deleted)")
    await changer.command("c", "EXPUNGE")
    keep(await _noop_until(watcher, b"EXPUNGE"))
    await _append(changer, "d", "\\Flagged", message)
    keep(await _noop_until(watcher, b"EXISTS"))
    return seen


@pytest.mark.skipif(
    dovecot_support.available() is not None, reason=str(dovecot_support.available())
)
async def test_search_contexts_answer_as_dovecot_does(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "oracle-context@example.test", tmp_path)
    stored = await store_mail(databases, box, 5)
    dovecot = dovecot_support.Dovecot(stored)
    await asyncio.to_thread(dovecot.start)
    try:
        clients = []
        for _ in range(2):
            client = await RawClient.connect(dovecot.port)
            await client.command("l", f"LOGIN {dovecot.user} {dovecot.password}")
            await client.command("s", "SELECT INBOX")
            clients.append(client)
        theirs = await _exchange(*clients, plain_message(9))
        for client in clients:
            await client.close()
    finally:
        await asyncio.to_thread(dovecot.stop)
    async with running_imap(cfg):
        clients = await _sessions(cfg, tls_ca, box)
        ours = await _exchange(*clients, plain_message(9))
        for client in clients:
            await client.close()
    assert ours == theirs
    assert b'* ESEARCH (TAG "u2") UID REMOVEFROM (0 2,4)\r\n' in ours, ours
