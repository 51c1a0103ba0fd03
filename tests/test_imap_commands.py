"""Every IMAP command through real clients: imaplib over STARTTLS, aioimaplib over implicit
TLS, and raw bytes where the exact response matters."""

from __future__ import annotations

import asyncio
import re

import aioimaplib
import pytest

from tests.imap_support import (
    RawClient,
    client_context,
    encrypt_for,
    imap_config,
    login,
    make_box,
    plain_message,
    ports,
    running_imap,
    store,
    store_mail,
)
from tests.intake_support import openssl_decrypt
from tests.support import make_vaultbox


@pytest.fixture
def cfg(databases, tls_files):
    return imap_config(databases, tls_files)


async def test_mailbox_and_message_commands_with_imaplib(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "commands@example.test", tmp_path)
    bodies = await store_mail(databases, box, 4)
    port, _ = ports(cfg)

    def client_side() -> None:
        client = login(port, tls_ca, box)
        assert client.capability()[1][0].startswith(b"IMAP4rev1")
        typ, listed = client.list()
        names = {line.decode().rsplit(" ", 1)[1] for line in listed}
        assert {"INBOX", "Sent", "Drafts", "Trash", "Junk"} <= names
        assert any(b"\\Sent" in line for line in listed)
        assert client.create("Projects/2024")[0] == "OK"
        typ, data = client.create("Projects/2024")
        assert typ == "NO" and data[0].startswith(b"[ALREADYEXISTS]"), data
        typ, data = client.rename("Junk", "Sent")
        assert typ == "NO" and data[0].startswith(b"[ALREADYEXISTS]"), data
        typ, data = client.subscribe("Nowhere")
        assert typ == "NO" and data[0].startswith(b"[NONEXISTENT]"), data
        assert client.rename("Projects/2024", "Projects/Archive")[0] == "OK"
        typ, listed = client.list('""', "Projects/%")
        assert listed == [b'(\\HasNoChildren) "/" Projects/Archive'], listed
        assert client.subscribe("Projects/Archive")[0] == "OK"
        assert client.unsubscribe("Projects/Archive")[0] == "OK"
        typ, lsub = client.lsub()
        assert not any(b"Projects/Archive" in line for line in lsub)
        typ, status = client.status("INBOX", "(MESSAGES UNSEEN UIDNEXT UIDVALIDITY)")
        assert b"MESSAGES 4 UNSEEN 4 UIDNEXT 5" in status[0], status
        assert client.namespace()[1] == [b'(("" "/")) NIL NIL']
        assert client.xatom("ID", "NIL")[0] == "OK"
        assert client.noop()[0] == "OK"

        typ, data = client.select("INBOX", readonly=True)
        assert data == [b"4"]
        assert client.store("1", "+FLAGS", "(\\Seen)")[0] == "NO"  # read-only
        client.select("INBOX")
        assert client.check()[0] == "OK"
        # partial fetches and sections of the stored bytes
        typ, data = client.fetch("2", "(BODY.PEEK[]<10.50> BODY.PEEK[HEADER] BODY.PEEK[TEXT])")
        parts = [item[1] for item in data if isinstance(item, tuple)]
        header, _, text = bodies[1].partition(b"\r\n\r\n")
        assert parts == [bodies[1][10:60], header + b"\r\n\r\n", text]
        typ, data = client.fetch("2", "(BODY.PEEK[1] BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)])")
        parts = [item[1] for item in data if isinstance(item, tuple)]
        assert parts[0] == text
        assert parts[1].startswith(b"From: ") and b"Subject: " in parts[1]
        assert parts[1].endswith(b"\r\n\r\n") and b"To:" not in parts[1]
        typ, data = client.fetch("1", "(FLAGS)")
        assert b"\\Seen" not in data[0]
        typ, data = client.fetch("1", "(RFC822)")  # not PEEK: sets \Seen
        assert data[0][1] == bodies[0]
        typ, data = client.fetch("1", "(FLAGS)")
        assert b"\\Seen" in data[0]

        typ, data = client.store("1:2", "+FLAGS", "(\\Flagged custom)")
        assert len(data) == 2 and b"\\Flagged" in data[0] and b"custom" in data[0]
        assert client.store("2", "-FLAGS.SILENT", "(custom)") == ("OK", [None])
        assert client.search(None, "FLAGGED")[1] == [b"1 2"]
        assert client.search(None, "UNSEEN")[1] == [b"2 3 4"]
        assert client.search(None, "OR", "SEEN", "KEYWORD", "custom")[1] == [b"1"]
        assert client.search(None, "NOT", "FLAGGED", "FROM", "sender3")[1] == [b"4"]
        assert client.search("UTF-8", "TO", "VAULT@example")[1] == [b"1 2 3 4"]
        assert client.search(None, "LARGER", "100", "2:3")[1] == [b"2 3"]
        assert client.uid("SEARCH", "UID", "3:*")[1] == [b"3 4"]

        assert client.uid("COPY", "1:2", "Projects/Archive")[0] == "OK"
        typ, data = client.uid("MOVE", "3", "Trash")
        assert typ == "OK"
        assert client.response("EXPUNGE") == ("EXPUNGE", [b"3"])
        assert client.search(None, "ALL")[1] == [b"1 2 3"]
        client.store("1", "+FLAGS", "(\\Deleted)")
        typ, data = client.expunge()
        assert data == [b"1"]
        client.store("1:2", "+FLAGS", "(\\Deleted)")
        assert client.uid("EXPUNGE", "4")[0] == "OK"
        assert client.response("EXPUNGE") == ("EXPUNGE", [b"2"])
        typ, data = client.uid("FETCH", "1:*", "(UID)")
        assert [re.search(rb"UID (\d+)", d).group(1) for d in data] == [b"2"]
        assert client.unselect()[0] == "OK"

        client.select("Trash")
        typ, data = client.fetch("1", "(BODY.PEEK[])")
        assert data[0][1] == bodies[2]
        client.store("1", "+FLAGS", "(\\Deleted)")
        assert client.close()[0] == "OK"
        assert client.status("Trash", "(MESSAGES)")[1] == [b"Trash (MESSAGES 0)"]
        assert client.delete("Projects/Archive")[0] == "OK"
        typ, data = client.delete("INBOX")
        assert typ == "NO" and data[0].startswith(b"[CANNOT]"), data
        typ, data = client.delete("Projects/Archive")
        assert typ == "NO" and data[0].startswith(b"[NONEXISTENT]"), data
        assert client.select("Projects/Archive")[0] == "NO"
        client.logout()

    async with running_imap(cfg):
        await asyncio.to_thread(client_side)


async def test_append_encrypts_plaintext_and_keeps_encrypted_mail(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "append@example.test", tmp_path)
    draft = plain_message(42)
    already = encrypt_for(box, plain_message(43))
    port, _ = ports(cfg)

    def client_side() -> None:
        client = login(port, tls_ca, box)
        for message, folder in ((draft, "Drafts"), (already, "Sent")):
            typ, data = client.append(folder, "(\\Draft)", None, message)
            assert typ == "OK", data
        assert client.append("Nowhere", None, None, draft)[0] == "NO"
        client.logout()

    async with running_imap(cfg):
        await asyncio.to_thread(client_side)
    conn = await databases.connect()
    try:
        rows = await conn.fetch(
            """SELECT m.name, e.body AS body_encrypted, e.flags, e.size_bytes
                 FROM encrypted_emails e JOIN mailboxes m ON m.id = e.mailbox_id
                WHERE e.vaultbox_id = $1""",
            box.id,
        )
    finally:
        await conn.close()
    by_folder = {row["name"]: row for row in rows}
    stored_draft = by_folder["Drafts"]["body_encrypted"]
    assert b"line of text 42" not in stored_draft
    assert b"application/pkcs7-mime" in stored_draft
    assert b"line of text 42" in openssl_decrypt(stored_draft, box.key_path)
    assert by_folder["Drafts"]["flags"] == ["\\Draft"]
    assert by_folder["Sent"]["body_encrypted"] == already
    assert by_folder["Sent"]["size_bytes"] == len(already)


async def test_append_without_certificate_is_refused(databases, cfg, tls_ca, tmp_path):
    demo = await make_vaultbox(databases, "nocert@example.test")
    port, _ = ports(cfg)

    def client_side() -> tuple[str, list]:
        client = login(port, tls_ca, demo)
        result = client.append("Drafts", None, None, plain_message(1))
        client.logout()
        return result

    async with running_imap(cfg):
        typ, data = await asyncio.to_thread(client_side)
    assert typ == "NO" and b"certificate" in data[0]


async def test_aioimaplib_over_implicit_tls(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "aio@example.test", tmp_path)
    bodies = await store_mail(databases, box, 3)
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        client = aioimaplib.IMAP4_SSL("127.0.0.1", tls_port, ssl_context=client_context(tls_ca))
        await client.wait_hello_from_server()
        assert (await client.login(box.username, box.password)).result == "OK"
        response = await client.select("INBOX")
        assert b"3 EXISTS" in response.lines
        response = await client.uid("fetch", "1:*", "(UID RFC822.SIZE BODY.PEEK[])")
        literals = [line for line in response.lines if isinstance(line, bytearray)]
        assert [bytes(body) for body in literals] == bodies
        response = await client.uid("fetch", "2", "(BODY.PEEK[]<0.20>)")
        assert bytes(response.lines[1]) == bodies[1][:20]
        assert (await client.store("1", "+FLAGS", "(\\Answered)")).result == "OK"
        response = await client.search("ANSWERED")
        assert response.lines[0] == b"1"
        response = await client.uid("copy", "1:3", "Junk")
        assert response.result == "OK"
        response = await client.status("Junk", "(MESSAGES)")
        assert b"MESSAGES 3" in response.lines[0]
        response = await client.list('""', "*")
        assert any(b"\\Junk" in line for line in response.lines)
        assert (await client.create("Reports")).result == "OK"
        assert (await client.rename("Reports", "Reports2")).result == "OK"
        assert (await client.delete("Reports2")).result == "OK"
        assert (await client.expunge()).result == "OK"
        assert (await client.close()).result == "OK"
        await client.logout()


async def test_literals_in_login_and_exact_responses(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "raw@example.test", tmp_path)
    body = encrypt_for(box, plain_message(1))
    await store(databases, box, body)
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        raw = await RawClient.connect(tls_port, tls_ca)
        assert raw.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1")
        assert b"AUTH=PLAIN" in raw.greeting and b"LOGINDISABLED" not in raw.greeting
        # synchronizing literal for the username, non-synchronizing (LITERAL+) for the password
        user = box.username.encode()
        await raw.send(b"a LOGIN {%d}\r\n" % len(user))
        assert (await raw.line()).startswith(b"+ ")
        await raw.send(user + b" {%d+}\r\n%b\r\n" % (len(box.password), box.password.encode()))
        reply = await raw.until("a")
        assert reply[-1].startswith(b"a OK [CAPABILITY"), reply
        reply = await raw.command("b", "SELECT inbox")
        assert b"* 1 EXISTS\r\n" in reply and reply[-1].startswith(b"b OK [READ-WRITE]")
        reply = await raw.command("c", "FETCH 1 (RFC822.SIZE BODY.PEEK[HEADER.FIELDS (to)])")
        assert reply[0] == b"* 1 FETCH (RFC822.SIZE %d BODY[HEADER.FIELDS (TO)] {26}\r\n" % len(
            body
        )
        assert reply[1] == b"To: vault@example.test\r\n\r\n"
        reply = await raw.command("d", 'LIST (SPECIAL-USE) "" "*" RETURN (SUBSCRIBED)')
        assert len(reply) == 5 and all(b"\\Subscribed" in line for line in reply[:4]), reply
        reply = await raw.command("d2", 'LIST "" (inbox "Sen%")')
        assert reply[:-1] == [
            b'* LIST (\\HasNoChildren) "/" INBOX\r\n',
            b'* LIST (\\HasNoChildren \\Sent) "/" Sent\r\n',
        ], reply
        reply = await raw.command("c2", "UID COPY 1 Junk")
        assert re.match(rb"c2 OK \[COPYUID \d+ 1 1\]", reply[-1]), reply
        message = encrypt_for(box, plain_message(2))
        await raw.send(b"c3 APPEND Junk (\\Seen) {%d+}\r\n%b\r\n" % (len(message), message))
        reply = await raw.until("c3")
        assert re.match(rb"c3 OK \[APPENDUID \d+ 2\]", reply[-1]), reply
        await raw.send(b"c4 APPEND INBOX {%d+}\r\n%b\r\n" % (len(message), message))
        reply = await raw.until("c4")  # into the selected mailbox: EXISTS with the reply
        assert reply[0] == b"* 2 EXISTS\r\n" and reply[-1].startswith(b"c4 OK"), reply
        reply = await raw.command("c5", "UID FETCH 2 (BODY.PEEK[])")
        assert reply[1] == message, reply
        reply = await raw.command("e", "ENABLE UTF8=ACCEPT")
        assert reply[-1].startswith(b"e OK")
        reply = await raw.command("f", "UNSELECT")
        assert reply[-1].startswith(b"f OK")
        reply = await raw.command("g", "LOGOUT")
        assert reply[0].startswith(b"* BYE") and reply[-1].startswith(b"g OK")
        await raw.close()


_DERIVED = "SELECT envelope, bodystructure, bodystructure_basic, mime_parts FROM encrypted_emails"


async def test_rows_stored_without_imap_metadata_get_it_on_first_fetch(
    databases, cfg, tls_ca, tmp_path
):
    """Messages stored before migration 004 lack ENVELOPE/BODYSTRUCTURE/part offsets: FETCH
    computes them, serves them, and saves them (as the IMAP role) for the next time."""
    box = await make_box(databases, "legacy@example.test", tmp_path)
    (body,) = await store_mail(databases, box, 1)
    _, tls_port = ports(cfg)

    async def fetch_in_a_new_process() -> list[bytes]:  # a new process: nothing cached
        async with running_imap(cfg):
            raw = await RawClient.connect(tls_port, tls_ca)
            await raw.login(box)
            await raw.command("s", "SELECT INBOX")
            reply = await raw.command("a", "FETCH 1 (ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[1])")
            await raw.close()
        return reply

    expected = await fetch_in_a_new_process()
    assert expected[0].startswith(b"* 1 FETCH (ENVELOPE (") and b"BODY[1] {" in expected[0]
    assert expected[1] == body.partition(b"\r\n\r\n")[2], expected
    conn = await databases.connect()
    try:
        before = await conn.fetchrow(_DERIVED + " WHERE vaultbox_id = $1", box.id)
        await conn.execute(
            """UPDATE encrypted_emails SET envelope = NULL, bodystructure = NULL,
                      bodystructure_basic = NULL, mime_parts = NULL WHERE vaultbox_id = $1""",
            box.id,
        )
        assert await fetch_in_a_new_process() == expected
        after = await conn.fetchrow(_DERIVED + " WHERE vaultbox_id = $1", box.id)
    finally:
        await conn.close()
    assert dict(after) == dict(before) and None not in dict(after).values()
