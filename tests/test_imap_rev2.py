"""IMAP4rev2 (RFC 9051) next to IMAP4rev1, and SEARCHRES (RFC 5182) in both.

imaplib speaks rev1 only, so rev2 is checked with raw exchanges; every difference is checked
in both modes on the same server. SEARCHRES in rev1 mode is compared with Dovecot 2.3 (which
offers SEARCHRES but not IMAP4rev2)."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
from collections.abc import AsyncIterator

import pytest

from tests import dovecot_support
from tests.imap_support import (
    Box,
    RawClient,
    imap_config,
    login,
    make_box,
    ports,
    running_imap,
    store,
)
from tests.test_imap_protocol import servers

needs_dovecot = pytest.mark.skipif(
    dovecot_support.available() is not None, reason=str(dovecot_support.available())
)


def _message(number: int) -> bytes:
    return (
        f"From: a{number}@example.org\r\nSubject: message {number}\r\n"
        f"Message-ID: <r{number}@example.org>\r\n\r\nbody {number}\r\n"
    ).encode()


@contextlib.asynccontextmanager
async def _both_modes(
    databases, tls_files, tls_ca, box: Box
) -> AsyncIterator[tuple[RawClient, RawClient]]:
    """The server running, with two sessions of `box`: one in rev1, one that enabled rev2."""
    cfg = imap_config(databases, tls_files)
    async with running_imap(cfg):
        rev1 = await RawClient.connect(ports(cfg)[1], tls_ca)
        rev2 = await RawClient.connect(ports(cfg)[1], tls_ca)
        for client in (rev1, rev2):
            await client.login(box)
        await _enable_rev2(rev2)
        try:
            yield rev1, rev2
        finally:
            for client in (rev1, rev2):
                await client.close()


async def _enable_rev2(client: RawClient) -> None:
    reply = await client.command("e", "ENABLE IMAP4rev2")
    assert reply == [b"* ENABLED IMAP4rev2\r\n", b"e OK ENABLE completed.\r\n"], reply


def _ok(reply: list[bytes]) -> list[bytes]:
    assert reply[-1].split(b" ")[1] == b"OK", reply
    return reply[:-1]


def _names(reply: list[bytes]) -> set[bytes]:
    return {line.rstrip(b"\r\n").split(b'"/" ', 1)[1] for line in reply}


def _bad(reply: list[bytes]) -> None:
    assert reply[-1].split(b" ")[1] == b"BAD", reply


@needs_dovecot
async def test_searchres_matches_dovecot(databases, tls_files, tls_ca, tmp_path):
    """`$` in FETCH, STORE, SEARCH, COPY, MOVE and their UID forms, as Dovecot answers them;
    `$` before any SAVE is the empty set; a failed SAVE empties it; malformed uses are BAD."""
    messages = [_message(n) for n in range(1, 7)]
    address = "searchres@example.test"
    async with servers(databases, tls_files, tls_ca, tmp_path, address, messages) as pair:
        c = await pair.connect()
        _theirs, ours = await pair.both(c, "CAPABILITY")
        assert b" SEARCHRES" in ours[0], ours
        await pair.same(c, "CREATE saved")
        await pair.same(c, "SELECT INBOX")
        # nothing saved yet: "$" names no message (RFC 5182 2.1)
        assert _ok(await pair.same(c, "FETCH $ (FLAGS)")) == []
        assert _ok(await pair.same(c, "UID FETCH $ (FLAGS)")) == []
        await pair.same(c, "SEARCH $")
        await pair.same(c, "STORE 2,4,5 +FLAGS.SILENT (\\Flagged)")
        # SAVE alone answers with no ESEARCH; "$" then names the matches in every command
        assert _ok(await pair.same(c, "SEARCH RETURN (SAVE) FLAGGED")) == []
        await pair.same(c, "FETCH $ (UID FLAGS)")
        await pair.same(c, "UID FETCH $ (FLAGS)")
        await pair.same(c, "SEARCH $")
        await pair.same(c, "SEARCH NOT $")
        await pair.same(c, "UID SEARCH UID $")
        await pair.same(c, "STORE $ +FLAGS (\\Seen)")
        await pair.same(c, "UID STORE $ -FLAGS.SILENT (\\Seen)")
        await pair.same(c, "FETCH 1:* (FLAGS)")
        await pair.same(c, "COPY $ saved")
        await pair.same(c, "UID COPY $ saved")
        await pair.same(c, "SORT (REVERSE SUBJECT) UTF-8 $")
        await pair.same(c, "UID SORT (SUBJECT) UTF-8 OR $ 1")
        await pair.same(c, "SEARCH RETURN (COUNT ALL) $")
        # SAVE with MIN/MAX only keeps those (RFC 5182 2.4); with ALL, everything matched
        await pair.same(c, "SEARCH RETURN (SAVE MIN) FLAGGED")
        await pair.same(c, "FETCH $ (UID)")
        await pair.same(c, "SEARCH RETURN (MAX SAVE) FLAGGED")
        await pair.same(c, "FETCH $ (UID)")
        await pair.same(c, "SEARCH RETURN (SAVE MIN MAX COUNT) FLAGGED")
        await pair.same(c, "FETCH $ (UID)")
        await pair.same(c, "UID SEARCH RETURN (SAVE ALL) $ 1:4")
        await pair.same(c, "UID FETCH $ (UID)")
        # an expunged message leaves the saved result
        await pair.same(c, "STORE 2 +FLAGS.SILENT (\\Deleted)")
        await pair.same(c, "EXPUNGE")
        await pair.same(c, "FETCH $ (UID)")
        # "$" alone is a sequence set; combined with numbers it is a syntax error
        for malformed in ("FETCH 1,$ (UID)", "FETCH $:3 (UID)", "FETCH $$ (UID)"):
            _bad(await pair.same(c, malformed))
        # a SAVE that fails empties "$" (RFC 5182 2.1; Dovecot keeps the old result when
        # it cannot parse the search, so this is checked on encimap alone)
        await pair.same(c, "SEARCH RETURN (SAVE) ALL")
        for client in pair.clients[c]:
            await client.command("r", "SEARCH RETURN (SAVE) FLAGGED")
        _theirs, ours = await pair.both(c, "SEARCH RETURN (SAVE) BOGUSKEY")
        _bad(ours)
        _theirs, ours = await pair.both(c, "FETCH $ (UID)")
        assert _ok(ours) == []
        await pair.same(c, "SEARCH RETURN (SAVE) FLAGGED")
        # (servers may send MOVE's EXPUNGEs in any order: compared by what remains)
        _theirs, ours = await pair.both(c, "MOVE $ saved")
        assert ours[0].startswith(b"* OK [COPYUID ") and ours[1] == b"* 3 EXPUNGE\r\n", ours
        await pair.same(c, "FETCH 1:* (UID FLAGS)")
        await pair.same(c, "SEARCH RETURN (SAVE) 1")
        await pair.same(c, "STORE $ +FLAGS.SILENT (\\Deleted)")
        await pair.same(c, "STORE 2 +FLAGS.SILENT (\\Deleted)")
        reply = await pair.same(c, "UID EXPUNGE $")
        assert reply[0] == b"* 1 EXPUNGE\r\n", reply
        await pair.same(c, "FETCH 1:* (UID FLAGS)")
        # a new SELECT forgets it
        await pair.same(c, "SEARCH RETURN (SAVE) ALL")
        await pair.same(c, "SELECT saved")
        assert _ok(await pair.same(c, "FETCH $ (UID)")) == []


async def test_enable_and_capabilities(databases, tls_files, tls_ca, tmp_path):
    box = await make_box(databases, "enable2@example.test", tmp_path)
    cfg = imap_config(databases, tls_files)
    async with running_imap(cfg):
        # before login (STARTTLS port, no TLS): both versions, LOGINDISABLED; ENABLE is BAD
        plain = await RawClient.connect(ports(cfg)[0])
        words = plain.greeting.split()
        assert b"IMAP4rev1" in words and b"IMAP4rev2" in words, plain.greeting
        assert b"LOGINDISABLED]" in words or b"LOGINDISABLED" in words, plain.greeting
        _bad(await plain.command("e", "ENABLE IMAP4rev2"))
        _bad(await plain.command("s", "SELECT INBOX"))
        reply = await plain.command("l", f"LOGIN {box.username} {box.password}")
        assert reply[-1].startswith(b"l NO [PRIVACYREQUIRED]"), reply
        await plain.close()

        client = await RawClient.connect(ports(cfg)[1], tls_ca)
        await client.login(box)
        caps = _ok(await client.command("c", "CAPABILITY"))[0].split()
        for word in (b"IMAP4rev1", b"IMAP4rev2", b"SEARCHRES", b"LITERAL+", b"ENABLE"):
            assert word in caps, caps
        assert b"LITERAL-" not in caps  # RFC 7888 5: LITERAL+ covers it, never both
        # unknown names are ignored; a second ENABLE of rev2 lists nothing new
        reply = await client.command("e", "ENABLE X-UNKNOWN imap4REV2")
        assert reply[0] == b"* ENABLED IMAP4rev2\r\n", reply
        assert (await client.command("e", "ENABLE IMAP4rev2"))[0] == b"* ENABLED\r\n"
        await client.close()

        # once a mailbox is selected, ENABLE IMAP4rev2 turns nothing on (RFC 9051 6.3.1)
        client = await RawClient.connect(ports(cfg)[1], tls_ca)
        await client.login(box)
        await client.command("s", "SELECT INBOX")
        assert (await client.command("e", "ENABLE IMAP4rev2"))[0] == b"* ENABLED\r\n"
        assert _ok(await client.command("f", "SEARCH ALL")) == [b"* SEARCH\r\n"]
        await client.close()


async def test_recent_in_rev1_only(databases, tls_files, tls_ca, tmp_path):
    """rev2 has no \\Recent: no RECENT responses, no \\Recent flag, RECENT/NEW/OLD and
    STATUS RECENT refused; a rev2 session claims nothing, so rev1 sessions still see the
    messages as recent. STATUS DELETED is rev2's."""
    box = await make_box(databases, "recent2@example.test", tmp_path)
    for number in range(1, 4):
        await store(databases, box, _message(number), flags=("\\Deleted",) if number == 2 else ())
    async with _both_modes(databases, tls_files, tls_ca, box) as (rev1, rev2):
        reply = _ok(await rev2.command("s", "SELECT INBOX"))
        assert not any(b"RECENT" in line or b"[UNSEEN" in line for line in reply), reply
        assert b'* LIST () "/" INBOX\r\n' in reply and b"* 3 EXISTS\r\n" in reply, reply
        reply = _ok(await rev2.command("f", "FETCH 1:* (FLAGS)"))
        assert reply == [
            b"* 1 FETCH (FLAGS ())\r\n",
            b"* 2 FETCH (FLAGS (\\Deleted))\r\n",
            b"* 3 FETCH (FLAGS ())\r\n",
        ], reply
        for refused in ("SEARCH RECENT", "SEARCH NEW", "SEARCH NOT OLD", "UID SEARCH OR 1 RECENT"):
            _bad(await rev2.command("r", refused))
        _bad(await rev2.command("r", "STATUS INBOX (RECENT)"))
        _bad(await rev2.command("r", 'LIST "" INBOX RETURN (STATUS (RECENT))'))
        reply = _ok(await rev2.command("d", "STATUS INBOX (MESSAGES DELETED SIZE)"))
        assert reply[0].startswith(b"* STATUS INBOX (MESSAGES 3 DELETED 1 SIZE "), reply
        # new mail while selected: EXISTS, never RECENT
        await store(databases, box, _message(4))
        reply = _ok(await rev2.command("n", "NOOP"))
        assert reply == [b"* 4 EXISTS\r\n"], reply
        # the rev1 session, which selected nothing yet, gets every message as recent
        _bad(await rev1.command("d", "STATUS INBOX (DELETED)"))
        assert b"RECENT 4" in _ok(await rev1.command("r", "STATUS INBOX (RECENT)"))[0]
        reply = _ok(await rev1.command("s", "SELECT INBOX"))
        assert b"* 4 RECENT\r\n" in reply and not any(b"* LIST" in line for line in reply)
        assert b"* OK [UNSEEN 1] First unseen.\r\n" in reply, reply
        reply = _ok(await rev1.command("f", "FETCH 1 (FLAGS)"))
        assert reply == [b"* 1 FETCH (FLAGS (\\Recent))\r\n"], reply
        reply = _ok(await rev1.command("r", "SEARCH NEW"))
        assert reply == [b"* SEARCH 1 2 3 4\r\n"], reply
        # IDLE in rev2: new mail is announced by EXISTS alone
        await rev2.send(b"i IDLE\r\n")
        assert (await rev2.line()).startswith(b"+ ")
        await store(databases, box, _message(5))
        assert await rev2.line() == b"* 5 EXISTS\r\n"
        await rev2.send(b"DONE\r\n")
        assert await rev2.until("i") == [b"i OK Idle completed.\r\n"]


async def test_search_answers_esearch_in_rev2(databases, tls_files, tls_ca, tmp_path):
    box = await make_box(databases, "esearch2@example.test", tmp_path)
    for number in range(1, 4):
        await store(databases, box, _message(number))
    cfg = imap_config(databases, tls_files)
    async with running_imap(cfg):
        client = await RawClient.connect(ports(cfg)[1], tls_ca)
        await client.login(box)
        await _enable_rev2(client)
        await client.command("s", "SELECT INBOX")
        assert _ok(await client.command("a", "SEARCH ALL")) == [b'* ESEARCH (TAG "a") ALL 1:3\r\n']
        reply = _ok(await client.command("b", "UID SEARCH 2:*"))
        assert reply == [b'* ESEARCH (TAG "b") UID ALL 2:3\r\n'], reply
        assert _ok(await client.command("c", "SEARCH DELETED")) == [b'* ESEARCH (TAG "c")\r\n']
        reply = _ok(await client.command("d", "SEARCH RETURN (COUNT) ALL"))
        assert reply == [b'* ESEARCH (TAG "d") COUNT 3\r\n'], reply
        assert _ok(await client.command("e", "SEARCH RETURN (SAVE) 1:2")) == []
        reply = _ok(await client.command("f", "FETCH $ (UID)"))
        assert reply == [b"* 1 FETCH (UID 1)\r\n", b"* 2 FETCH (UID 2)\r\n"], reply
        reply = _ok(await client.command("g", "SEARCH CHARSET UTF-8 SUBJECT message"))
        assert reply == [b'* ESEARCH (TAG "g") ALL 1:3\r\n'], reply
        await client.close()
    # the same server in rev1 (imaplib): SEARCH, "$"
    async with running_imap(cfg):
        imap = await asyncio.to_thread(login, ports(cfg)[0], tls_ca, box)
        try:
            assert "IMAP4REV2" in imap.capabilities, imap.capabilities
            await asyncio.to_thread(imap.select, "INBOX")
            assert await asyncio.to_thread(imap.search, None, "ALL") == ("OK", [b"1 2 3"])
            typ, _ = await asyncio.to_thread(imap.search, None, "RETURN", "(SAVE)", "2:3")
            assert typ == "OK"
            typ, data = await asyncio.to_thread(imap.fetch, "$", "(UID)")
            assert (typ, data) == ("OK", [b"2 (UID 2)", b"3 (UID 3)"]), data
            with pytest.raises(imaplib.IMAP4.error):
                await asyncio.to_thread(imap.fetch, "$,1", "(UID)")
        finally:
            await asyncio.to_thread(imap.logout)


async def test_list_select_and_rename_in_rev2(databases, tls_files, tls_ca, tmp_path):
    box = await make_box(databases, "list2@example.test", tmp_path)
    async with _both_modes(databases, tls_files, tls_ca, box) as (rev1, rev2):
        _ok(await rev1.command("c", "CREATE p/child"))
        for command in ("CREATE gone", "SUBSCRIBE gone", "DELETE gone"):
            _ok(await rev1.command("c", command))
        # a parent that exists only as a path: \Noselect for rev1, \NonExistent for rev2
        reply = _ok(await rev1.command("l", 'LIST "" p'))
        assert reply == [b'* LIST (\\Noselect \\HasChildren) "/" p\r\n'], reply
        reply = _ok(await rev2.command("l", 'LIST "" p'))
        assert reply == [b'* LIST (\\NonExistent \\HasChildren) "/" p\r\n'], reply
        # \Subscribed and \NonExistent with LIST (SUBSCRIBED), as in rev1
        for client in (rev1, rev2):
            reply = _ok(await client.command("l", 'LIST (SUBSCRIBED) "" gone'))
            assert reply == [b'* LIST (\\NonExistent \\Subscribed) "/" gone\r\n'], reply
        # RENAME: rev2 learns the new name with OLDNAME, rev1 gets the plain OK
        assert _ok(await rev1.command("r", "RENAME p/child q")) == []
        reply = _ok(await rev2.command("r", "RENAME q p/again"))
        assert reply == [b'* LIST () "/" p/again ("OLDNAME" ("q"))\r\n'], reply
        # CREATE/DELETE of a normalized name
        assert _ok(await rev1.command("c", "CREATE made/")) == []
        assert _ok(await rev2.command("c", "CREATE other/")) == [
            b'* LIST () "/" other ("OLDNAME" ("other/"))\r\n'
        ]
        assert _ok(await rev2.command("d", "DELETE made")) == []
        # SELECT: a LIST of the mailbox (OLDNAME when the name given was not canonical),
        # then [CLOSED] when it replaces another selected mailbox
        reply = _ok(await rev2.command("s", "SELECT inbox"))
        assert reply[0] == b'* LIST () "/" INBOX ("OLDNAME" ("inbox"))\r\n', reply
        reply = _ok(await rev2.command("s", "EXAMINE other"))
        assert reply[:2] == [
            b"* OK [CLOSED] Previous mailbox closed.\r\n",
            b'* LIST () "/" other\r\n',
        ], reply
        reply = await rev2.command("s", "SELECT nothere")
        assert reply[0] == b"* OK [CLOSED] Previous mailbox closed.\r\n", reply
        assert reply[-1].startswith(b"s NO [NONEXISTENT]"), reply
        _ok(await rev1.command("s", "SELECT INBOX"))
        reply = _ok(await rev1.command("s", "SELECT other"))
        assert not any(b"CLOSED" in line or b"* LIST" in line for line in reply), reply


async def test_uid_commands_answer_with_uid_and_literals(databases, tls_files, tls_ca, tmp_path):
    """`* n FETCH` answering a UID command carries the message's UID (and its sequence number
    first), in both modes; a non-synchronizing literal of 4096 bytes (LITERAL-) works."""
    box = await make_box(databases, "uid2@example.test", tmp_path)
    for number in range(1, 4):
        await store(databases, box, _message(number))
    cfg = imap_config(databases, tls_files)
    async with running_imap(cfg):
        for mode in ("rev1", "rev2"):
            client = await RawClient.connect(ports(cfg)[1], tls_ca)
            await client.login(box)
            if mode == "rev2":
                await _enable_rev2(client)
            await client.command("s", "SELECT INBOX")
            flag = "\\Seen" if mode == "rev1" else "\\Answered"
            reply = _ok(await client.command("u", f"UID STORE 3 +FLAGS ({flag})"))
            assert reply[0].startswith(b"* 3 FETCH (") and b"UID 3" in reply[0], reply
            reply = _ok(await client.command("u", "UID FETCH 2 (BODY[TEXT])"))
            assert reply[0].startswith(b"* 2 FETCH (UID 2 BODY[TEXT] {8}"), reply
            assert b"FLAGS (\\Seen" in b"".join(reply[1:]), reply
            head = b"From: x@example.org\r\nSubject: big\r\n\r\n"
            body = head + b"x" * (4096 - len(head))
            await client.send(b"a APPEND INBOX {%d+}\r\n%b\r\n" % (len(body), body))
            reply = await client.until("a")
            assert reply[-1].startswith(b"a OK [APPENDUID "), reply
            await client.close()


async def test_mailbox_names_are_utf8_in_rev2(databases, tls_files, tls_ca, tmp_path):
    """RFC 9051 5.1: a rev2 client names mailboxes in UTF-8, a rev1 client in modified
    UTF-7; both name the same mailboxes."""
    box = await make_box(databases, "utf8names@example.test", tmp_path)
    async with _both_modes(databases, tls_files, tls_ca, box) as (rev1, rev2):
        _ok(await rev2.command("c", 'CREATE "Entwürfe/A&B"'))
        _ok(await rev1.command("c", "CREATE &ZeVnLIqe-"))
        listed = _names(_ok(await rev1.command("l", 'LIST "" *')))
        assert {b"Entw&APw-rfe", b"Entw&APw-rfe/A&-B", b"&ZeVnLIqe-"} <= listed, listed
        listed = _names(_ok(await rev2.command("l", 'LIST "" *')))
        expected = {'"Entwürfe"'.encode(), '"Entwürfe/A&B"'.encode(), '"日本語"'.encode()}
        assert expected <= listed, listed
        reply = _ok(await rev2.command("s", 'STATUS "日本語" (MESSAGES)'))
        assert reply == ['* STATUS "日本語" (MESSAGES 0)\r\n'.encode()], reply
        reply = _ok(await rev2.command("s", 'SELECT "Entwürfe/A&B"'))
        assert reply[0] == b'* LIST () "/" "Entw\xc3\xbcrfe/A&B"\r\n', reply
        # the rev1 spelling is just text to a rev2 client: another name
        reply = await rev2.command("s", "STATUS &ZeVnLIqe- (MESSAGES)")
        assert reply[-1].startswith(b"s NO [NONEXISTENT]"), reply
        reply = _ok(await rev1.command("s", "STATUS Entw&APw-rfe/A&-B (MESSAGES)"))
        assert reply == [b"* STATUS Entw&APw-rfe/A&-B (MESSAGES 0)\r\n"], reply
