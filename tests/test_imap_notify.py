"""NOTIFY (RFC 5465) over real sockets: one session changes the vaultbox (delivery, APPEND,
STORE, EXPUNGE, CREATE, RENAME, DELETE, SUBSCRIBE), another waits for its next command and is
told at once: STATUS and LIST for other mailboxes, EXISTS/FETCH/EXPUNGE for the selected one.
Also NOTIFY NONE, BADEVENT, malformed commands, the limits, the shared reads and imaptest's
own `notify` script."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest

from encimap.imap.commands import notify
from encimap.store import mailboxes
from tests import imaptest_support
from tests.imap_support import (
    RawClient,
    encrypt_for,
    imap_config,
    make_box,
    plain_message,
    ports,
    running_imap,
    store,
    store_mail,
)
from tests.imaptest_support import IMAPTEST


@pytest.fixture
def cfg(databases, tls_files):
    return imap_config(databases, tls_files)


async def _session(port, tls_ca, box) -> RawClient:
    client = await RawClient.connect(port, tls_ca)
    await client.login(box)
    return client


async def _unsolicited(client: RawClient, until: bytes, limit: int = 20) -> list[bytes]:
    """Untagged lines the server sends on its own, up to one containing `until`."""
    lines = []
    for _ in range(limit):
        line = await client.line()
        lines.append(line)
        if until in line:
            return lines
    raise AssertionError(f"no {until!r} in {lines!r}")


async def _nothing_more(client: RawClient) -> None:
    """Nothing unsolicited is waiting: a NOOP's reply comes first."""
    reply = await client.command("z", "NOOP")
    assert reply == [b"z OK NOOP completed.\r\n"] or reply[-1].startswith(b"z OK"), reply
    assert len(reply) == 1, reply


async def test_status_for_other_mailboxes_and_list_for_names(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "watcher@example.test", tmp_path)
    _, port = ports(cfg)
    async with running_imap(cfg):
        actor = await _session(port, tls_ca, box)
        watcher = await _session(port, tls_ca, box)
        assert (await actor.command("c", "CREATE Work"))[-1].startswith(b"c OK")
        reply = await watcher.command(
            "n",
            "NOTIFY SET STATUS (personal (MessageNew MessageExpunge FlagChange MailboxName "
            "SubscriptionChange))",
        )
        assert reply[-1].startswith(b"n OK"), reply
        statuses = {line.split(b" (")[0]: line for line in reply if line.startswith(b"* STATUS")}
        assert {b"* STATUS INBOX", b"* STATUS Work", b"* STATUS Trash"} <= set(statuses), reply
        assert re.match(
            rb"\* STATUS INBOX \(MESSAGES 0 UIDNEXT 1 UIDVALIDITY \d+ UNSEEN 0"
            rb" HIGHESTMODSEQ \d+\)\r\n$",
            statuses[b"* STATUS INBOX"],
        ), reply

        # a delivery to INBOX (the intake's insert path)
        await store(databases, box, encrypt_for(box, plain_message(1)))
        lines = await _unsolicited(watcher, b"STATUS")
        assert re.match(
            rb"\* STATUS INBOX \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1", lines[-1]
        )

        # APPEND, STORE and EXPUNGE in Work by the other session
        message = encrypt_for(box, plain_message(2))
        await actor.send(b"a APPEND Work {%d+}\r\n" % len(message) + message + b"\r\n")
        assert (await actor.until("a"))[-1].startswith(b"a OK")
        lines = await _unsolicited(watcher, b"STATUS")
        assert lines[-1].startswith(b"* STATUS Work (MESSAGES 1 UIDNEXT 2"), lines
        await actor.command("s", "SELECT Work")
        await actor.command("f", "STORE 1 +FLAGS (\\Seen \\Deleted)")
        lines = await _unsolicited(watcher, b"STATUS")
        assert b"* STATUS Work (" in lines[-1] and b"UNSEEN 0" in lines[-1], lines
        await actor.command("e", "EXPUNGE")
        lines = await _unsolicited(watcher, b"STATUS")
        assert lines[-1].startswith(b"* STATUS Work (MESSAGES 0"), lines
        await actor.command("u", "UNSELECT")

        # mailbox names and subscriptions
        for change, expected in (
            ("CREATE Projects", b'* LIST () "/" Projects\r\n'),
            ("RENAME Projects Archive", b'* LIST () "/" Archive ("OLDNAME" ("Projects"))\r\n'),
            ("SUBSCRIBE Archive", b'* LIST (\\Subscribed) "/" Archive\r\n'),
            ("UNSUBSCRIBE Archive", b'* LIST () "/" Archive\r\n'),
            ("DELETE Archive", b'* LIST (\\NonExistent) "/" Archive\r\n'),
        ):
            await actor.command("c", change)
            lines = await _unsolicited(watcher, b"LIST")
            assert lines[-1] == expected, (change, lines)

        # its own changes: the replies told it, no notification
        await watcher.command("c", "CREATE Mine")
        await _nothing_more(watcher)

        # NOTIFY NONE stops them
        assert (await watcher.command("n", "NOTIFY NONE"))[-1].startswith(b"n OK")
        await store(databases, box, encrypt_for(box, plain_message(3)))
        await actor.command("c", "CREATE Later")
        await actor.command("x", "NOOP")
        await _nothing_more(watcher)
        for client in (actor, watcher):
            await client.close()


async def test_filters_choose_the_mailboxes(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "filters@example.test", tmp_path)
    _, port = ports(cfg)
    async with running_imap(cfg):
        actor = await _session(port, tls_ca, box)
        watcher = await _session(port, tls_ca, box)
        for name in ("Lists", "Lists/a", "Other", "Sub"):
            await actor.command("c", f"CREATE {name}")
        await actor.command("s", "SUBSCRIBE Sub")
        reply = await watcher.command(
            "n",
            "NOTIFY SET (subtree Lists (MessageNew MessageExpunge)) (subscribed (MessageNew "
            "MessageExpunge)) (inboxes (MessageNew))",
        )
        assert reply[-1].startswith(b"n OK"), reply
        for name in ("Other", "Lists/a", "Sub", "INBOX"):
            await store(databases, box, encrypt_for(box, plain_message(1)), mailbox=name)
        seen = []
        while len(seen) < 3:
            line = (await _unsolicited(watcher, b"STATUS"))[-1]
            seen.append(line.split(b" (")[0])
        assert seen == [b"* STATUS Lists/a", b"* STATUS Sub", b"* STATUS INBOX"], seen
        await _nothing_more(watcher)  # Other is in no filter
        for client in (actor, watcher):
            await client.close()


async def test_selected_mailbox_is_reported_while_waiting(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "selected@example.test", tmp_path)
    await store_mail(databases, box, 2)
    _, port = ports(cfg)
    async with running_imap(cfg):
        actor = await _session(port, tls_ca, box)
        watcher = await _session(port, tls_ca, box)
        await watcher.command("s", "SELECT INBOX")
        await actor.command("s", "SELECT INBOX")
        reply = await watcher.command(
            "n",
            "NOTIFY SET (selected (MessageNew (UID FLAGS BODY.PEEK[HEADER.FIELDS (From)]) "
            "MessageExpunge FlagChange)) (personal (MessageNew MessageExpunge))",
        )
        assert reply[-1].startswith(b"n OK") and not reply[:-1], reply  # no STATUS asked
        await store(databases, box, encrypt_for(box, plain_message(7)))
        lines = await _unsolicited(watcher, b"FETCH")
        assert lines[0] == b"* 3 EXISTS\r\n", lines
        fetched = lines[-1] + b"".join([await watcher.line() for _ in range(3)])
        assert re.match(
            rb"\* 3 FETCH \(UID 3 FLAGS \(\\Recent\) BODY\[HEADER.FIELDS \(FROM\)\] \{\d+\}\r\n"
            rb"From: Sender 7 <sender7@example.org>\r\n\r\n\)\r\n$",
            fetched,
        ), fetched
        await actor.command("f", "STORE 1 +FLAGS (\\Flagged)")
        lines = await _unsolicited(watcher, b"FETCH")
        assert lines[-1] == b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))\r\n", lines
        await actor.command("f", "STORE 2 +FLAGS (\\Deleted)")
        await _unsolicited(watcher, b"FETCH")
        await actor.command("e", "EXPUNGE")
        lines = await _unsolicited(watcher, b"EXPUNGE")
        assert lines[-1] == b"* 2 EXPUNGE\r\n", lines
        assert await watcher.line() == b"* 2 RECENT\r\n"
        # the selected mailbox gets no STATUS (personal matches it too)
        await _nothing_more(watcher)

        # SELECTED-DELAYED: expunges wait for a command that may report them
        await watcher.command("n", "NOTIFY SET (selected-delayed (MessageNew MessageExpunge))")
        await actor.command("f", "STORE 1 +FLAGS (\\Deleted)")
        await actor.command("e", "EXPUNGE")
        await store(databases, box, encrypt_for(box, plain_message(8)))
        lines = await _unsolicited(watcher, b"EXISTS")
        assert b"EXPUNGE" not in b"".join(lines), lines
        reply = await watcher.command("z", "NOOP")
        assert b"* 1 EXPUNGE\r\n" in reply, reply
        for client in (actor, watcher):
            await client.close()


async def test_errors(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "errors@example.test", tmp_path)
    _, port = ports(cfg)
    async with running_imap(cfg):
        client = await RawClient.connect(port, tls_ca)
        assert b"NOTIFY" in (await client.command("c", "CAPABILITY"))[0]
        reply = await client.command("a", "NOTIFY NONE")
        assert reply[-1].startswith(b"a BAD"), reply  # not before login
        await client.login(box)
        bad = [
            "NOTIFY",
            "NOTIFY SET",
            "NOTIFY SET STATUS",
            "NOTIFY NONE STATUS",
            "NOTIFY MAYBE",
            "NOTIFY SET (personal ())",
            "NOTIFY SET (personal)",
            "NOTIFY SET (elsewhere (MessageNew))",
            "NOTIFY SET (subtree (MessageNew))",
            "NOTIFY SET (mailboxes () (MessageNew))",
            "NOTIFY SET (selected (MessageNew))",
            "NOTIFY SET (selected (FlagChange))",
            "NOTIFY SET (selected (MessageNew MessageExpunge MailboxName))",
            "NOTIFY SET (selected (MessageNew MessageExpunge)) (selected-delayed (MessageNew "
            "MessageExpunge))",
            "NOTIFY SET (personal (MessageNew (UID) MessageExpunge))",
            "NOTIFY SET (selected (MessageNew (NOSUCHITEM) MessageExpunge))",
            "NOTIFY SET (personal (MessageNew)) trailing",
        ]
        for text in bad:
            reply = await client.command("b", text)
            assert reply[-1].startswith(b"b BAD"), (text, reply)
        for event in ("AnnotationChange", "MailboxMetadataChange", "ServerMetadataChange", "Xyz"):
            reply = await client.command("e", f"NOTIFY SET (personal (MessageNew {event}))")
            assert reply[-1] == (
                b"e NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName "
                b"SubscriptionChange)] Unsupported NOTIFY events\r\n"
            ), reply
        names = " ".join(f"m{n}" for n in range(notify.MAX_NAMES + 1))
        reply = await client.command("l", f"NOTIFY SET (mailboxes ({names}) (MessageNew))")
        assert reply[-1].startswith(b"l NO [LIMIT]"), reply
        groups = " ".join(["(personal (MessageNew))"] * (notify.MAX_GROUPS + 1))
        reply = await client.command("l", f"NOTIFY SET {groups}")
        assert reply[-1].startswith(b"l NO [LIMIT]"), reply
        # a failed NOTIFY leaves none set: a delivery is not reported
        await store(databases, box, encrypt_for(box, plain_message(1)))
        await _nothing_more(client)
        await client.close()


async def test_one_read_per_change_for_many_sessions(databases, cfg, tls_ca, tmp_path, monkeypatch):
    """Ten sessions watching: a delivery costs the same reads as for one session."""
    box = await make_box(databases, "many@example.test", tmp_path)
    _, port = ports(cfg)
    calls: list[str] = []
    for name in ("list_mailboxes", "counts", "subscriptions", "count_recent"):
        original = getattr(mailboxes, name)

        async def counting(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return await _original(*args, **kwargs)

        monkeypatch.setattr(mailboxes, name, counting)

    async def reads(count: int) -> int:
        clients = [await _session(port, tls_ca, box) for _ in range(count)]
        for client in clients:
            await client.command("n", "NOTIFY SET (inboxes (MessageNew MessageExpunge))")
        calls.clear()
        await store(databases, box, encrypt_for(box, plain_message(1)))
        for client in clients:
            await _unsolicited(client, b"STATUS")
        count = len(calls)
        for client in clients:
            await client.close()
        return count

    async with running_imap(cfg):
        one = await reads(1)
        ten = await reads(10)
    assert one == ten == 2, (one, ten)  # the mailbox list and the changed mailbox's counts


async def test_imaptest_notify_script(databases, tls_files, tmp_path):
    """imaptest's `notify` script; without QRESYNC on offer (HIGHESTMODSEQ in STATUS) a copy
    that drops that requirement and the highestmodseq item."""
    if imaptest_support.available() is not None:
        pytest.skip(imaptest_support.available())
    cfg = imap_config(databases, tls_files, trusted_networks=["127.0.0.0/8"])
    box = await make_box(databases, "imaptest-notify@example.test", tmp_path)
    port, _ = ports(cfg)
    script = (IMAPTEST / "tests-cipher" / "notify").read_text()
    work = tmp_path / "notify-test"
    work.mkdir()
    shutil.copy(IMAPTEST / "tests-cipher" / "default.mbox", work / "default.mbox")
    async with running_imap(cfg):
        hello = await RawClient.connect(port)
        capabilities = (await hello.command("c", "CAPABILITY"))[0]
        await hello.close()
        if b"QRESYNC" not in capabilities:
            script = script.replace("capabilities: notify qresync", "capabilities: notify")
            script = script.replace(" highestmodseq $hmodseq", "")
        (work / "notify").write_text(script)
        process = await asyncio.create_subprocess_exec(
            str(IMAPTEST / "imaptest"),
            "host=127.0.0.1",
            f"port={port}",
            f"user={box.username}",
            f"pass={box.password}",
            "test=./notify",
            cwd=work,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
    text = out.decode(errors="replace") + err.decode(errors="replace")
    assert process.returncode == 0, text
    assert "1 test groups: 0 failed, 0 skipped" in text, text
    assert "extensions: 0/7 individual commands failed" in text, text


async def _held_during_a_command(
    databases, port, tls_ca, box, tail: bytes = b""
) -> tuple[list[bytes], RawClient]:
    """The watcher is inside APPEND (waiting for its literal) while Work and Other get mail:
    the APPEND's responses, and the watcher. `tail` follows the literal."""
    watcher = await _session(port, tls_ca, box)
    observer = await _session(port, tls_ca, box)
    for name in ("Work", "Other"):
        await observer.command("c", f"CREATE {name}")
    for client in (watcher, observer):
        reply = await client.command("n", "NOTIFY SET (personal (MessageNew MessageExpunge))")
        assert reply[-1].startswith(b"n OK"), reply
    message = encrypt_for(box, plain_message(5))
    await watcher.send(b"a APPEND Sent {%d}\r\n" % len(message))
    assert (await watcher.line()).startswith(b"+ ")
    for name in ("Work", "Other"):
        await store(databases, box, encrypt_for(box, plain_message(1)), mailbox=name)
    # the watch reports its sessions in the order they joined: the observer is told last
    seen = {(await _unsolicited(observer, b"STATUS"))[-1].split(b" (")[0] for _ in range(2)}
    assert seen == {b"* STATUS Work", b"* STATUS Other"}, seen
    await observer.close()
    await watcher.send(message + tail + b"\r\n")
    return await watcher.until("a"), watcher


async def test_held_during_a_command_and_sent_before_its_reply(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "held@example.test", tmp_path)
    _, port = ports(cfg)
    async with running_imap(cfg):
        reply, watcher = await _held_during_a_command(databases, port, tls_ca, box)
        assert [line.split(b" (")[0] for line in reply[:-1]] == [
            b"* STATUS Work",
            b"* STATUS Other",
        ], reply
        assert reply[-1].startswith(b"a OK [APPENDUID"), reply
        await watcher.close()


async def test_held_during_a_bad_command_and_sent_after_it(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "held-bad@example.test", tmp_path)
    _, port = ports(cfg)
    async with running_imap(cfg):
        reply, watcher = await _held_during_a_command(databases, port, tls_ca, box, b" junk")
        assert len(reply) == 1 and reply[0].startswith(b"a BAD"), reply
        seen = {(await watcher.line()).split(b" (")[0] for _ in range(2)}
        assert seen == {b"* STATUS Work", b"* STATUS Other"}, seen
        await watcher.close()


async def test_overflow_stops_notifications(databases, cfg, tls_ca, tmp_path, monkeypatch):
    monkeypatch.setattr(notify, "_MAX_PENDING", 1)
    box = await make_box(databases, "overflow@example.test", tmp_path)
    _, port = ports(cfg)
    async with running_imap(cfg):
        reply, watcher = await _held_during_a_command(databases, port, tls_ca, box)
        assert reply[0] == b"* OK [NOTIFICATIONOVERFLOW] Notifications stopped\r\n", reply
        assert len(reply) == 2 and reply[-1].startswith(b"a OK"), reply
        await store(databases, box, encrypt_for(box, plain_message(2)), mailbox="Work")
        await _nothing_more(watcher)
        await watcher.close()


async def test_status_during_idle(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "idle-notify@example.test", tmp_path)
    _, port = ports(cfg)
    async with running_imap(cfg):
        watcher = await _session(port, tls_ca, box)
        await watcher.command("s", "SELECT Sent")
        await watcher.command("n", "NOTIFY SET (inboxes (MessageNew MessageExpunge))")
        await watcher.send(b"i IDLE\r\n")
        assert (await watcher.line()).startswith(b"+ ")
        await store(databases, box, encrypt_for(box, plain_message(1)))
        lines = await _unsolicited(watcher, b"STATUS")
        assert lines[-1].startswith(b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2"), lines
        await watcher.send(b"DONE\r\n")
        assert (await watcher.until("i"))[-1].startswith(b"i OK"), lines
        await watcher.close()


async def test_names_reach_each_session_as_it_reads_them(databases, cfg, tls_ca, tmp_path):
    """The same change, told to a rev1 session in modified UTF-7 and to one that enabled
    IMAP4rev2 in UTF-8 (RFC 9051 5.1), STATUS and LIST alike."""
    box = await make_box(databases, "names@example.test", tmp_path)
    _, port = ports(cfg)
    async with running_imap(cfg):
        actor, rev1, rev2 = [await _session(port, tls_ca, box) for _ in "arr"]
        assert (await rev2.command("e", "ENABLE IMAP4rev2"))[-1].startswith(b"e OK")
        await actor.command("c", "CREATE &AOk-t&AOk-")
        for watcher in (rev1, rev2):
            reply = await watcher.command(
                "n", "NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))"
            )
            assert reply[-1].startswith(b"n OK"), reply
        message = encrypt_for(box, plain_message(1))
        await actor.send(b"a APPEND &AOk-t&AOk- {%d+}\r\n" % len(message) + message + b"\r\n")
        assert (await actor.until("a"))[-1].startswith(b"a OK")
        assert (await _unsolicited(rev1, b"STATUS"))[-1].startswith(b"* STATUS &AOk-t&AOk- (")
        utf8 = '* STATUS "été" ('.encode()
        assert (await _unsolicited(rev2, b"STATUS"))[-1].startswith(utf8)
        await actor.command("r", "RENAME &AOk-t&AOk- Hiver")
        line = (await _unsolicited(rev1, b"LIST"))[-1]
        assert line == b'* LIST () "/" Hiver ("OLDNAME" ("&AOk-t&AOk-"))\r\n', line
        line = (await _unsolicited(rev2, b"LIST"))[-1]
        assert line == '* LIST () "/" Hiver ("OLDNAME" ("été"))\r\n'.encode(), line
        for client in (actor, rev1, rev2):
            await client.close()


async def test_new_mail_whose_binary_cannot_be_served_is_announced_without_its_fetch(
    databases, cfg, tls_ca, tmp_path
):
    """MessageNew asks for BINARY of a part in an encoding no one knows: the session is told
    of the message (EXISTS) and stays usable; its own FETCH then gets NO [UNKNOWN-CTE]."""
    box = await make_box(databases, "binarynew@example.test", tmp_path)
    _, port = ports(cfg)
    async with running_imap(cfg):
        watcher = await _session(port, tls_ca, box)
        await watcher.command("s", "SELECT INBOX")
        reply = await watcher.command(
            "n", "NOTIFY SET (selected (MessageNew (UID BINARY.PEEK[1]) MessageExpunge))"
        )
        assert reply[-1].startswith(b"n OK"), reply
        odd = (
            b"From: a@example.org\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: x-unheard-of\r\n\r\ndata\r\n--b--\r\n"
        )
        await store(databases, box, odd)
        assert (await _unsolicited(watcher, b"EXISTS"))[-1] == b"* 1 EXISTS\r\n"
        reply = await watcher.command("f", "FETCH 1 BINARY.PEEK[1]")
        assert reply[-1].startswith(b"f NO [UNKNOWN-CTE]"), reply
        await watcher.close()


async def test_new_mail_too_large_for_message_new_overflows(databases, cfg, tls_ca, tmp_path):
    """MessageNew asking for whole bodies: new mail whose FETCH would pass
    notify.MESSAGE_NEW_BYTES ends notifications (RFC 5465 5.8) instead of being built in
    memory; the EXISTS is still sent, and the client's own FETCH reads the message."""
    box = await make_box(databases, "bodies@example.test", tmp_path)
    await store_mail(databases, box, 1)
    _, port = ports(cfg)
    async with running_imap(cfg):
        watcher = await _session(port, tls_ca, box)
        await watcher.command("s", "SELECT INBOX")
        reply = await watcher.command(
            "n", "NOTIFY SET (selected (MessageNew (UID BODY.PEEK[]) MessageExpunge))"
        )
        assert reply[-1].startswith(b"n OK"), reply
        await store(databases, box, plain_message(2, size=2 * notify.MESSAGE_NEW_BYTES))
        lines = await _unsolicited(watcher, b"NOTIFICATIONOVERFLOW")
        assert b"* 2 EXISTS\r\n" in lines, lines
        assert not any(b"FETCH" in line for line in lines), lines
        await store(databases, box, plain_message(3))  # MessageNew's FETCH has stopped
        reply = await watcher.command("f", "NOOP")
        assert b"* 3 EXISTS\r\n" in reply and reply[-1].startswith(b"f OK"), reply
        assert not any(b"FETCH" in line for line in reply), reply
        reply = await watcher.command("b", "FETCH 2 (UID RFC822.SIZE)")
        assert reply[-1].startswith(b"b OK"), reply
        await watcher.close()
