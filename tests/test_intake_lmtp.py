"""LMTP delivery over a real socket into real PostgreSQL, checked with `openssl cms -decrypt`."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import asyncpg
import pytest

from tests.intake_support import (
    LMTPClient,
    add_certificate,
    dot_stuff,
    intake_config,
    openssl_decrypt,
    port_of,
    running_intake,
    stored_messages,
)
from tests.support import Databases, make_vaultbox

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: good@vault.test\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Message-ID: <m1@sender.test>\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"\r\n"
    b"Hello,\r\n.leading dot survives\r\nbye\r\n"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
def boxes(databases: Databases, keys: Path) -> dict:
    return asyncio.run(_make_boxes(databases, keys))


async def _make_boxes(databases: Databases, keys: Path) -> dict:
    good = await make_vaultbox(databases, "good@vault.test")
    no_cert = await make_vaultbox(databases, "nocert@vault.test")
    wrong = await make_vaultbox(databases, "wrong@vault.test")
    disabled = await make_vaultbox(databases, "off@vault.test", status="suspended")
    full = await make_vaultbox(databases, "full@vault.test")
    key = await add_certificate(databases, good.vaultbox, keys)
    await add_certificate(databases, wrong.vaultbox, keys, address="someone@else.test")
    await add_certificate(databases, disabled.vaultbox, keys)
    await add_certificate(databases, full.vaultbox, keys)
    conn = await databases.connect()
    try:
        await conn.execute(
            """UPDATE vaultboxes SET limits = '{"max_messages": 0}' WHERE id = $1""",
            full.vaultbox.id,
        )
    finally:
        await conn.close()
    return {"good": good.vaultbox, "key": key, "nocert": no_cert.vaultbox}


@pytest.fixture
async def intake(databases: Databases):
    cfg = intake_config(databases)
    async with running_intake(cfg):
        yield cfg


async def test_replies_per_recipient_and_stored_message_decrypts(databases, boxes, intake):
    before = len(await stored_messages(databases, boxes["good"]))
    client = await LMTPClient.connect(port_of(intake))
    try:
        assert (await client.command("LHLO client.test")).startswith("250")
        rcpt, data = await client.transaction(
            "alice@sender.test",
            ["unknown@vault.test", "nocert@vault.test", "GOOD+news@Vault.Test"],
            MESSAGE,
        )
    finally:
        await client.close()
    assert rcpt[0].startswith("550 5.1.1")
    assert rcpt[1].startswith("451 4.7.1")
    assert rcpt[2].startswith("250 2.1.5")
    assert len(data) == 1 and data[0].startswith("250 2.0.0")

    stored = await stored_messages(databases, boxes["good"])
    assert len(stored) == before + 1
    row = stored[-1]
    body = bytes(row["body_encrypted"])
    assert b"quarterly numbers" not in body and b"leading dot" not in body
    assert b"Subject: [...]\r\n" in body
    assert row["size_bytes"] == len(body)
    assert row["flags"] == []
    assert row["message_id"] == "<m1@sender.test>"
    assert row["recipient"] == "GOOD+news@Vault.Test"
    assert row["sender"] == "alice@sender.test"
    assert row["certificate_fingerprints"] and row["subject_encrypted"]
    assert row["encryption_method"].startswith("aes256-cbc")

    plain = openssl_decrypt(body, boxes["key"])
    assert b"Hello,\r\n.leading dot survives\r\nbye\r\n" in plain
    assert b"Subject: quarterly numbers" in plain
    assert b"Return-Path: <alice@sender.test>" in plain
    assert b"by mx.test (encimap) with LMTP id" in plain

    conn = await databases.connect()
    try:
        log = await conn.fetchrow(
            "SELECT * FROM email_processing_logs WHERE email_id = $1", row["id"]
        )
    finally:
        await conn.close()
    assert log["outcome"] == "stored" and log["reply_code"] == "250"
    assert log["size_original"] == len(MESSAGE) and log["size_stored"] == len(body)


async def test_rcpt_refusals(databases, boxes, intake):
    client = await LMTPClient.connect(port_of(intake))
    try:
        await client.command("LHLO client.test")
        rcpt, _ = await client.transaction(
            "a@b.test",
            ["wrong@vault.test", "off@vault.test", "full@vault.test", "not-an-address"],
            MESSAGE,
        )
    finally:
        await client.close()
    assert rcpt[0].startswith("451 4.7.1")  # its certificate is for another address
    assert rcpt[1].startswith("550 5.2.1")
    assert rcpt[2].startswith("452 4.2.2")
    assert rcpt[3].startswith("501 5.1.3")  # no @domain: a syntax error (RFC 5321 4.1.2)


async def test_lhlo_announces_pipelining_and_a_pipelined_transaction_is_answered_in_order(
    databases, boxes, intake, keys
):
    """RFC 2033 section 5: PIPELINING and ENHANCEDSTATUSCODES. A client may send MAIL, every
    RCPT and DATA in one write (as Postfix's LMTP client then does) and read the replies after."""
    second = (await make_vaultbox(databases, "second@vault.test")).vaultbox
    second_key = await add_certificate(databases, second, keys)
    message = MESSAGE.replace(b"<m1@", b"<pipelined@")
    client = await LMTPClient.connect(port_of(intake))
    try:
        client.writer.write(b"LHLO client.test\r\n")
        lhlo = await client.reply()
        assert lhlo[0] == "250-mx.test" and lhlo[-1] == "250 HELP"
        assert {"250-PIPELINING", "250-ENHANCEDSTATUSCODES"} <= set(lhlo)
        client.writer.write(
            b"MAIL FROM:<alice@sender.test>\r\nRCPT TO:<good@vault.test>\r\n"
            b"RCPT TO:<unknown@vault.test>\r\nRCPT TO:<second@vault.test>\r\nDATA\r\n"
        )
        answers = [(await client.reply())[-1][:9] for _ in range(5)]
        assert answers == ["250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354 End d"]
        client.writer.write(dot_stuff(message) + b".\r\n")
        data = [(await client.reply())[-1] for _ in range(2)]
    finally:
        await client.close()
    assert [line[:9] for line in data] == ["250 2.0.0", "250 2.0.0"]
    for box, key in ((boxes["good"], boxes["key"]), (second, second_key)):
        plain = openssl_decrypt(
            bytes((await stored_messages(databases, box))[-1]["body_encrypted"]), key
        )
        assert b"Message-ID: <pipelined@sender.test>" in plain
        assert b"Received: from client.test ([127.0.0.1])" in plain  # the LHLO name


async def test_every_reply_but_greeting_and_lhlo_has_an_enhanced_status_code(intake):
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(intake))
    client = LMTPClient(reader, writer)
    try:
        greeting = (await client.reply())[-1]
        assert greeting.startswith("220 mx.test ")  # RFC 2034: not the greeting
        commands = [
            "LHLO client.test",
            "HELO client.test",  # not LMTP
            "FOO",
            "MAIL",
            "RCPT TO:<good@vault.test>",
            "DATA",
            "MAIL FROM:<alice@sender.test> BOGUS=1",
            "NOOP",
            "RSET",
            "VRFY good@vault.test",
            "QUIT",
        ]
        answers = {}
        for command in commands:
            writer.write(command.encode() + b"\r\n")
            answers[command] = (await client.reply())[-1]
    finally:
        writer.close()
    assert answers.pop("LHLO client.test") == "250 HELP"
    for command, answer in answers.items():
        assert re.match(r"[245]\d\d [245]\.\d{1,3}\.\d{1,3} ", answer), (command, answer)
    assert answers["RCPT TO:<good@vault.test>"].startswith("503 5.5.1")
    assert answers["QUIT"].startswith("221 2.0.0")


async def test_missing_certificate_can_reject(databases, boxes):
    cfg = intake_config(databases, missing_certificate="reject")
    async with running_intake(cfg):
        client = await LMTPClient.connect(port_of(cfg))
        try:
            await client.command("LHLO client.test")
            rcpt, _ = await client.transaction("a@b.test", ["nocert@vault.test"], MESSAGE)
        finally:
            await client.close()
    assert rcpt[0].startswith("550 5.7.1")


async def test_retry_after_dropped_connection_is_stored_once(databases, boxes, intake):
    message = MESSAGE.replace(b"<m1@sender.test>", b"<retry@sender.test>")
    before = len(await stored_messages(databases, boxes["good"]))
    client = await LMTPClient.connect(port_of(intake))
    await client.command("LHLO client.test")
    await client.command("MAIL FROM:<a@b.test>")
    await client.command("RCPT TO:<good@vault.test>")
    assert (await client.command("DATA")).startswith("354")
    client.writer.write(dot_stuff(message) + b".\r\n")
    await client.writer.drain()
    client.writer.transport.abort()  # the reply is lost: the MTA will retry
    await asyncio.sleep(0.5)
    client = await LMTPClient.connect(port_of(intake))
    try:
        await client.command("LHLO client.test")
        _, data = await client.transaction("a@b.test", ["good@vault.test"], message)
    finally:
        await client.close()
    assert data[0].startswith("250")
    stored = await stored_messages(databases, boxes["good"])
    assert len(stored) == before + 1
    assert [row["message_id"] for row in stored].count("<retry@sender.test>") == 1
    conn = await databases.connect()
    try:
        # the dropped delivery goes on without its client: it may still be committing
        deadline = time.monotonic() + 10
        while True:
            outcomes = await conn.fetch(
                """SELECT outcome FROM email_processing_logs l JOIN encrypted_emails e
                     ON e.id = l.email_id WHERE e.message_id = '<retry@sender.test>'
                     ORDER BY l.id"""
            )
            if len(outcomes) >= 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    assert [r["outcome"] for r in outcomes] == ["stored", "duplicate"]


async def test_concurrent_duplicates_store_once(databases, boxes, intake):
    """The same message over several connections at once: one row, every reply 250."""
    message = MESSAGE.replace(b"<m1@sender.test>", b"<race@sender.test>")

    async def send() -> str:
        client = await LMTPClient.connect(port_of(intake))
        try:
            await client.command("LHLO client.test")
            _, data = await client.transaction("a@b.test", ["good@vault.test"], message)
            return data[0]
        finally:
            await client.close()

    answers = await asyncio.gather(*(send() for _ in range(6)))
    assert all(answer.startswith("250") for answer in answers)
    stored = await stored_messages(databases, boxes["good"])
    assert [row["message_id"] for row in stored].count("<race@sender.test>") == 1
    uids = [row["uid"] for row in stored]
    assert uids == sorted(set(uids))


async def test_new_mail_is_notified_at_commit(databases, boxes, intake):
    conn = await asyncpg.connect(databases.encimap_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener("encimap_mailbox", lambda *args: heard.put_nowait(args[3]))
    try:
        client = await LMTPClient.connect(port_of(intake))
        try:
            await client.command("LHLO client.test")
            message = MESSAGE.replace(b"<m1@sender.test>", b"<notify@sender.test>")
            await client.transaction("a@b.test", ["good@vault.test"], message)
        finally:
            await client.close()
        payload = await asyncio.wait_for(heard.get(), 5)
    finally:
        await conn.close()
    vaultbox_id, mailbox_id, uid = payload.split(":")
    stored = await stored_messages(databases, boxes["good"])
    assert vaultbox_id == str(boxes["good"].id)
    assert (int(mailbox_id), int(uid)) == (stored[-1]["mailbox_id"], stored[-1]["uid"])
