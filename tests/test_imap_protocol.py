"""RFC 3501 behaviour that Dovecot 2.3 gets right, checked against a private Dovecot serving the
same messages (`tests/dovecot_support.py`): the same commands go to both servers and their
replies must agree (normalised where servers may differ: tags' texts, UIDVALIDITY, order of
flags and attributes, quoting of names). Concurrency properties are checked on encimap alone."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import pytest

from tests import dovecot_support
from tests.imap_support import (
    Box,
    RawClient,
    imap_config,
    make_box,
    ports,
    running_imap,
    store,
)

pytestmark = pytest.mark.skipif(
    dovecot_support.available() is not None, reason=str(dovecot_support.available())
)


def _message(number: int, header: str) -> bytes:
    return (
        f"{header}Subject: message {number}\r\nMessage-ID: <p{number}@example.org>\r\n\r\n"
        f"body {number}\r\n"
    ).encode()


class Servers:
    """Dovecot and encimap holding the same messages in INBOX; clients logged in to both."""

    def __init__(self, dovecot: dovecot_support.Dovecot, port: int, tls_ca, box: Box) -> None:
        self.dovecot, self.port, self.tls_ca, self.box = dovecot, port, tls_ca, box
        self.clients: list[tuple[RawClient, RawClient]] = []

    async def connect(self) -> int:
        theirs = await RawClient.connect(self.dovecot.port)
        reply = await theirs.command("L", f"LOGIN {self.dovecot.user} {self.dovecot.password}")
        assert reply[-1].startswith(b"L OK"), reply
        ours = await RawClient.connect(self.port, self.tls_ca)
        await ours.login(self.box)
        self.clients.append((theirs, ours))
        return len(self.clients) - 1

    async def both(self, index: int, command: str) -> tuple[list[bytes], list[bytes]]:
        theirs, ours = self.clients[index]
        return (await theirs.command("t", command), await ours.command("t", command))

    async def same(self, index: int, command: str) -> list[bytes]:
        """Run `command` on both; their normalised replies must be equal. Returns ours."""
        theirs, ours = await self.both(index, command)
        assert normalised(ours) == normalised(theirs), (command, theirs, ours)
        return ours

    async def close(self) -> None:
        for pair in self.clients:
            for client in pair:
                await client.close()


@contextlib.asynccontextmanager
async def servers(
    databases, tls_files, tls_ca, tmp_path, address: str, messages: list[bytes]
) -> AsyncIterator[Servers]:
    box = await make_box(databases, address, tmp_path)
    for message in messages:
        await store(databases, box, message)
    cfg = imap_config(databases, tls_files)
    dovecot = dovecot_support.Dovecot(messages)
    await asyncio.to_thread(dovecot.start)
    try:
        async with running_imap(cfg):
            pair = Servers(dovecot, ports(cfg)[1], tls_ca, box)
            try:
                yield pair
            finally:
                await pair.close()
    finally:
        await asyncio.to_thread(dovecot.stop)


_IGNORED = re.compile(rb"^\* OK \[(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ|UNSEEN|CLOSED)\b|^\+ ")


def normalised(reply: list[bytes]) -> list[bytes]:
    """Untagged lines with sorted flag and attribute lists, names unquoted, server-specific
    codes dropped; the tagged line as its status and response code."""
    lines = []
    for line in reply[:-1]:
        line = line.rstrip()  # Dovecot ends an empty THREAD with a space
        if _IGNORED.match(line):
            continue
        line = re.sub(rb"\[COPYUID \d+ ", b"[COPYUID - ", line)
        if re.match(rb"\* (OK|NO|BAD|BYE)\b", line):  # the text after a code is free
            line = line[: line.index(b"]") + 1] if b"]" in line else line[:5]
        if line.startswith((b"* THREAD", b"* SORT", b"* ESEARCH")):  # order matters here
            lines.append(line.replace(b'"', b""))
            continue
        line = re.sub(
            rb"\(([^()]*)\)",
            lambda m: b"(" + b" ".join(sorted(m[1].lower().split())) + b")",
            line,
        )
        lines.append(line.replace(b'"', b""))
    if lines and all(line.startswith((b"* LIST", b"* LSUB")) for line in lines):
        lines.sort()  # servers list mailboxes in different orders
    tagged = reply[-1].split(b" ", 2)
    code = re.match(rb"\[[A-Z-]+", tagged[2]) if len(tagged) > 2 else None
    return [*lines, tagged[1] + (b" " + code[0] + b"]" if code else b"")]


def _search(reply: list[bytes]) -> set[int]:
    line = next(line for line in reply if line.startswith(b"* SEARCH"))
    return {int(n) for n in line.split()[2:]}


async def test_search_header_addresses_and_sent_dates(databases, tls_files, tls_ca, tmp_path):
    messages = [
        _message(
            1,
            "From: <user-from (comment)@ (comment) domain.org>\r\nCc: cc@example.org\r\n"
            "Date: Sun, 25 Mar 2007 23:30:00 -0500\r\n",
        ),
        _message(2, "From: plain@example.org\r\nDate: Mon, 26 Mar 2007 01:00:00 +0200\r\n"),
        _message(
            3,
            'From: "Some Name" <x@example.org>\r\nTo: to@example.org\r\n'
            "Date: Mon, 26 Mar 2007 12:00:00 +0000\r\n",
        ),
    ]
    async with servers(
        databases, tls_files, tls_ca, tmp_path, "search@example.test", messages
    ) as pair:
        client = await pair.connect()
        await pair.same(client, "EXAMINE INBOX")
        # 1: a header field the message lacks does not match the empty string
        assert _search(await pair.same(client, 'SEARCH HEADER CC ""')) == {1}
        await pair.same(client, 'SEARCH NOT HEADER CC ""')
        await pair.same(client, 'SEARCH HEADER CC "cc@"')
        # 2: addresses are matched parsed, comments and folding aside
        assert _search(await pair.same(client, 'SEARCH FROM "user-from@domain.org"')) == {1}
        await pair.same(client, 'SEARCH FROM "some name"')
        await pair.same(client, 'SEARCH TO "to@example"')
        # 3: SENT* take the date as written, time and zone disregarded
        assert _search(await pair.same(client, "SEARCH SENTON 25-Mar-2007")) == {1}
        assert _search(await pair.same(client, "SEARCH SENTON 26-Mar-2007")) == {2, 3}
        # LIST-STATUS (RFC 5819): the STATUS of each listed mailbox after its LIST
        reply = await pair.same(client, 'LIST "" INBOX RETURN (STATUS (MESSAGES UIDNEXT))')
        assert reply[1] == b"* STATUS INBOX (MESSAGES 3 UIDNEXT 4)\r\n", reply
        await pair.same(client, "SEARCH SENTBEFORE 26-Mar-2007")
        await pair.same(client, "SEARCH SENTSINCE 26-Mar-2007")


async def test_recent_and_new_keywords(databases, tls_files, tls_ca, tmp_path):
    messages = [_message(1, "From: a@example.org\r\n")]
    async with servers(
        databases, tls_files, tls_ca, tmp_path, "recent@example.test", messages
    ) as pair:
        first, second = await pair.connect(), await pair.connect()
        await pair.same(first, "CREATE r4")
        for client in pair.clients[first]:
            await _raw_append(client, "r4", messages[0], "(\\Seen) ")
            await _raw_append(client, "r4", messages[0])
        # 4: a message is \Recent in the first session that selects its mailbox, only there
        reply = await pair.same(first, "STATUS r4 (MESSAGES RECENT)")
        assert b"RECENT 2" in reply[0], reply
        reply = await pair.same(first, "SELECT r4")
        assert b"* 2 RECENT\r\n" in reply, reply
        assert _search(await pair.same(first, "SEARCH RECENT")) == {1, 2}
        assert _search(await pair.same(first, "SEARCH NEW")) == {2}
        assert _search(await pair.same(first, "SEARCH OLD")) == set()
        await pair.same(first, "FETCH 1:* (FLAGS)")
        reply = await pair.same(second, "SELECT r4")
        assert b"* 0 RECENT\r\n" in reply, reply
        assert _search(await pair.same(second, "SEARCH RECENT")) == set()
        assert _search(await pair.same(second, "SEARCH OLD")) == {1, 2}
        # 5: a new keyword is announced (FLAGS, PERMANENTFLAGS) before a FETCH shows it
        reply = await pair.same(first, "STORE 1 +FLAGS (kw5)")
        assert reply[0].startswith(b"* FLAGS (") and b"kw5" in reply[0], reply
        assert reply[1].startswith(b"* OK [PERMANENTFLAGS (") and b"kw5" in reply[1], reply
        assert reply[2].startswith(b"* 1 FETCH"), reply


async def _raw_append(client: RawClient, mailbox: str, message: bytes, flags: str = "") -> None:
    command = f"a APPEND {mailbox} {flags}{{{len(message)}+}}\r\n"
    await client.send(command.encode() + message + b"\r\n")
    assert (await client.until("a"))[-1].startswith(b"a OK")


async def test_subscriptions_lsub_and_list_extended(databases, tls_files, tls_ca, tmp_path):
    async with servers(databases, tls_files, tls_ca, tmp_path, "lists@example.test", []) as pair:
        c = await pair.connect()
        # 7: LSUB lists the \Noselect parent a "%" reaches of a subscribed child
        await pair.same(c, "CREATE r6/x/y")
        await pair.same(c, "SUBSCRIBE r6/x/y")
        reply = await pair.same(c, 'LSUB "" r6/%')
        assert reply[0] == b'* LSUB (\\Noselect) "/" r6/x\r\n', reply
        await pair.same(c, 'LSUB "" r6/*')
        # 8: CREATE does not subscribe, DELETE keeps the subscription, UNSUBSCRIBE still works
        await pair.same(c, "CREATE r8")
        assert len(await pair.same(c, 'LSUB "" r8')) == 1
        await pair.same(c, "SUBSCRIBE r8")
        await pair.same(c, "DELETE r8")
        assert b"r8" in (await pair.same(c, 'LSUB "" r8'))[0]
        # 10: a subscribed name without a mailbox is \NonExistent; CHILDINFO for RECURSIVEMATCH
        reply = await pair.same(c, 'LIST (SUBSCRIBED) "" r8')
        assert b"\\NonExistent" in reply[0], reply
        assert (await pair.same(c, "UNSUBSCRIBE r8"))[-1].startswith(b"t OK")
        await pair.same(c, 'LSUB "" r8')
        await pair.same(c, "CREATE r10/a")
        await pair.same(c, "SUBSCRIBE r10/a")
        reply = await pair.same(c, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" r10')
        assert b'("CHILDINFO" ("SUBSCRIBED"))' in reply[0], reply
        await pair.same(c, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" r10/%')
        await pair.same(c, 'LIST (SUBSCRIBED) "" r*')
        await pair.same(c, 'LIST "" r% RETURN (CHILDREN SUBSCRIBED)')
        await pair.same(c, 'LIST "" r%')
        await pair.same(c, 'LIST "" r*')
        # 9: unknown options and RECURSIVEMATCH alone are BAD
        for bad in (
            'LIST (BOGUS) "" *',
            'LIST (RECURSIVEMATCH) "" *',
            'LIST (RECURSIVEMATCH REMOTE) "" *',
            'LIST "" * RETURN (BOGUS)',
        ):
            assert (await pair.same(c, bad))[-1].startswith(b"t BAD"), bad


async def test_move_into_the_selected_mailbox_and_logout(databases, tls_files, tls_ca, tmp_path):
    messages = [_message(n, "From: a@example.org\r\n") for n in range(1, 4)]
    async with servers(
        databases, tls_files, tls_ca, tmp_path, "move@example.test", messages
    ) as pair:
        first, second = await pair.connect(), await pair.connect()
        await pair.same(first, "SELECT INBOX")
        await pair.same(second, "SELECT INBOX")
        # 11: MOVE into the selected mailbox is a copy to new UIDs and an expunge
        reply = await pair.same(first, "MOVE 1 INBOX")
        assert reply[0].startswith(b"* OK [COPYUID "), reply
        # 12: after another session's expunge, LOGOUT's BYE is followed by the tagged OK only
        await pair.same(first, "STORE 1 +FLAGS.SILENT (\\Deleted)")
        await pair.same(first, "EXPUNGE")
        for client in pair.clients[second]:
            reply = await client.command("z", "LOGOUT")
            bye = next(i for i, line in enumerate(reply) if line.startswith(b"* BYE"))
            assert reply[bye + 1 :] == [reply[-1]] and reply[-1].startswith(b"z OK"), reply


async def test_the_next_command_reports_a_committed_change(databases, tls_files, tls_ca, tmp_path):
    """13: A's STORE completes, then B's NOOP reports it: every time, not just usually."""
    box = await make_box(databases, "notice@example.test", tmp_path)
    await store(databases, box, _message(1, "From: a@example.org\r\n"))
    cfg = imap_config(databases, tls_files)
    async with running_imap(cfg):
        a = await RawClient.connect(ports(cfg)[1], tls_ca)
        b = await RawClient.connect(ports(cfg)[1], tls_ca)
        for client in (a, b):
            await client.login(box)
            await client.command("s", "SELECT INBOX")
        missed = 0
        for round_ in range(300):
            action = "+FLAGS.SILENT" if round_ % 2 == 0 else "-FLAGS.SILENT"
            await a.command("a", f"STORE 1 {action} (\\Flagged)")
            reply = await b.command("b", "NOOP")
            missed += not any(b"FETCH" in line for line in reply)
        assert missed == 0, f"{missed} of 300 changes not reported by the next NOOP"
        for client in (a, b):
            await client.close()


async def test_concurrent_stores_and_expunges_do_not_deadlock(
    databases, tls_files, tls_ca, tmp_path
):
    """14: sessions changing and expunging overlapping messages wait for each other; none is
    answered NO [UNAVAILABLE] (a PostgreSQL deadlock)."""
    box = await make_box(databases, "deadlock@example.test", tmp_path)
    message = _message(1, "From: a@example.org\r\n")
    for _ in range(40):
        await store(databases, box, message)
    cfg = imap_config(databases, tls_files)
    async with running_imap(cfg):
        clients = [await RawClient.connect(ports(cfg)[1], tls_ca) for _ in range(6)]
        for client in clients:
            await client.login(box)
            await client.command("s", "SELECT INBOX")

        async def work(index: int, client: RawClient) -> list[bytes]:
            failures = []
            for round_ in range(25):
                commands = [
                    f"UID STORE 1:* +FLAGS.SILENT (\\Seen k{index})",
                    "UID STORE 1:* -FLAGS.SILENT (\\Seen)",
                    f"UID STORE {round_ % 7 + 1}:* +FLAGS.SILENT (\\Deleted)",
                    "EXPUNGE",
                ]
                for command in commands[index % 2 :] + commands[: index % 2]:
                    reply = await client.command("w", command)
                    if not reply[-1].startswith(b"w OK"):
                        failures.append(reply[-1])
                await _raw_append(client, "INBOX", message)
            return failures

        results = await asyncio.gather(*(work(i, c) for i, c in enumerate(clients)))
        assert [failure for result in results for failure in result] == []
        for client in clients:
            await client.close()


async def test_esearch_and_multiappend(databases, tls_files, tls_ca, tmp_path):
    messages = [_message(n, "From: a@example.org\r\n") for n in range(1, 5)]
    address = "esearch@example.test"
    async with servers(databases, tls_files, tls_ca, tmp_path, address, messages) as pair:
        c = await pair.connect()
        _theirs, ours = await pair.both(c, "CAPABILITY")
        for capability in (b" ESEARCH", b" MULTIAPPEND", b" STATUS=SIZE", b" APPENDLIMIT="):
            assert capability in ours[0], ours
        await pair.same(c, "SELECT INBOX")
        await pair.same(c, "STORE 2,4 +FLAGS.SILENT (\\Seen)")
        # RFC 4731: one ESEARCH response; RETURN () means ALL; COUNT even when nothing matches
        reply = await pair.same(c, "SEARCH RETURN (MIN MAX COUNT ALL) SEEN")
        assert reply[0] == b'* ESEARCH (TAG "t") MIN 2 MAX 4 ALL 2,4 COUNT 2\r\n', reply
        await pair.same(c, "UID SEARCH RETURN () 1:*")
        await pair.same(c, "SEARCH RETURN (COUNT) 1000")
        await pair.same(c, "SEARCH RETURN (MIN) 1000")
        await pair.same(c, "SEARCH RETURN (BOGUS) ALL")
        # RFC 3502: several messages in one APPEND, stored together
        for client in pair.clients[c]:
            first, second = messages[0], messages[1]
            await client.send(
                f"m APPEND INBOX (\\Flagged) {{{len(first)}+}}\r\n".encode()
                + first
                + f" {{{len(second)}+}}\r\n".encode()
                + second
                + b"\r\n"
            )
            reply = await client.until("m")
            assert re.match(rb"m OK \[APPENDUID \d+ 5:6\]", reply[-1]), reply
        await pair.same(c, "NOOP")
        await pair.same(c, "SEARCH RETURN (ALL) FLAGGED")


async def test_sort_on_clear_header_fields(databases, tls_files, tls_ca, tmp_path):
    headers = [
        "From: Zed <b@example.org>\r\nTo: x@example.org\r\nCc: grp: m@example.org;\r\n"
        "Subject: Re: [list] Fwd: apples\r\nDate: Mon, 2 Jan 2024 10:00:00 +0500\r\n",
        "From: a@example.org\r\nTo: =?iso-8859-1?q?J=F6rg?= <j@example.org>\r\n"
        "Subject: bananas (fwd)\r\nDate: Mon, 2 Jan 2024 04:00:00 -0200\r\n",
        'From: "Al" <c@example.org>\r\nTo: y@example.org, a@example.org\r\n'
        "Cc: c@example.org\r\nSubject: APPLES\r\nDate: bogus\r\n",
        "From: b@example.org\r\nSubject: cherries\r\n",
    ]
    messages = [_message(n, header) for n, header in enumerate(headers, 1)]
    address = "sort@example.test"
    async with servers(databases, tls_files, tls_ca, tmp_path, address, messages) as pair:
        c = await pair.connect()
        await pair.same(c, "SELECT INBOX")
        for criteria in (
            "FROM",
            "REVERSE TO",
            "CC FROM",
            "SUBJECT",
            "REVERSE SUBJECT ARRIVAL",
            "DISPLAYFROM",
            "DISPLAYTO",
            "SIZE",
        ):
            await pair.same(c, f"SORT ({criteria}) UTF-8 ALL")
        await pair.same(c, "UID SORT (FROM) US-ASCII NOT SUBJECT cherries")
        await pair.same(c, "SORT RETURN (MIN MAX COUNT) (FROM) UTF-8 ALL")
        await pair.same(c, "SORT (BOGUS) UTF-8 ALL")


async def test_thread_references_and_orderedsubject(databases, tls_files, tls_ca, tmp_path):
    def mail(number: int, fields: str, day: int) -> bytes:
        return (
            f"From: a@example.org\r\n{fields}Date: {day} Jan 2024 10:00:00 +0000\r\n\r\n"
            f"body {number}\r\n"
        ).encode()

    messages = [
        mail(1, "Message-ID: <a@x>\r\nSubject: apples\r\n", 1),
        mail(2, "Message-ID: <b@x>\r\nReferences: <a@x> <c@x>\r\nSubject: Re: apples\r\n", 3),
        mail(3, "Message-ID: <c@x>\r\nReferences: <b@x>\r\nSubject: Re: apples\r\n", 2),
        mail(4, "Message-ID: <d@x>\r\nIn-Reply-To: <gone@x>\r\nSubject: pears\r\n", 4),
        mail(5, "Message-ID: <e@x>\r\nIn-Reply-To: <gone@x>\r\nSubject: Re: pears\r\n", 5),
        mail(6, "Message-ID: <a@x>\r\nSubject: [list] apples\r\n", 6),
        mail(7, "Subject: Fwd: plums\r\n", 7),
        mail(8, "Message-ID: <p@x>\r\nSubject: plums (fwd)\r\n", 8),
    ]
    address = "thread@example.test"
    async with servers(databases, tls_files, tls_ca, tmp_path, address, messages) as pair:
        c = await pair.connect()
        await pair.same(c, "SELECT INBOX")
        await pair.same(c, "THREAD REFERENCES UTF-8 ALL")
        await pair.same(c, "UID THREAD REFERENCES UTF-8 NOT 1")
        await pair.same(c, "THREAD ORDEREDSUBJECT UTF-8 ALL")
        await pair.same(c, "THREAD REFERENCES UTF-8 SUBJECT nothing-matches")
        await pair.same(c, "THREAD BOGUS UTF-8 ALL")
