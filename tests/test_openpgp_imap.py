"""IMAP with an OpenPGP vaultbox: APPEND encrypts a plaintext draft as PGP/MIME (GnuPG opens
it), and the stored PGP/MIME message is described as Dovecot describes it."""

from __future__ import annotations

import re

import pysequoia
import pytest

from encimap import openpgp
from encimap.store import messages, openpgp_keys
from tests import dovecot_support
from tests.imap_support import (
    RawClient,
    fetch_from_both,
    imap_config,
    plain_message,
    ports,
    running_imap,
)
from tests.intake_support import (
    LMTPClient,
    intake_config,
    port_of,
    running_intake,
    stored_messages,
)
from tests.openpgp_support import (
    TOOLS,
    decrypt,
    make_any_key,
    make_key,
    stop_agent,
    tools_missing,
)
from tests.smime_support import split_entity
from tests.support import Databases, make_vaultbox

pytestmark = pytest.mark.skipif(bool(tools_missing()), reason=f"missing {tools_missing()}")
ITEMS = ("ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822.SIZE", "BODY.PEEK[1]", "BODY.PEEK[2.MIME]")


async def _keyed_box(databases: Databases, address: str, armored: bytes):
    demo = await make_vaultbox(databases, address)
    cert, info = openpgp.check_key(armored, address)
    conn = await databases.connect()
    try:
        await openpgp_keys.put_key(
            conn, vaultbox_id=demo.vaultbox.id, armored_key=str(cert), info=info
        )
    finally:
        await conn.close()
    return demo


async def test_append_of_a_draft_is_stored_as_pgp_mime(databases, tls_files, tls_ca, tmp_path):
    key = make_key("drafts@pgp-imap.test")
    try:
        box = await _keyed_box(databases, "drafts@pgp-imap.test", key.public)
        draft = plain_message(7)
        cfg = imap_config(databases, tls_files)
        async with running_imap(cfg):
            raw = await RawClient.connect(ports(cfg)[1], tls_ca)
            await raw.login(box)
            await raw.send(b"a APPEND Drafts (\\Draft) {%d+}\r\n%b\r\n" % (len(draft), draft))
            reply = await raw.until("a")
            assert re.match(rb"a OK \[APPENDUID \d+ 1\]", reply[-1]), reply
            await raw.command("s", "SELECT Drafts")
            fetched = await raw.command("f", "UID FETCH 1 (BODY.PEEK[])")
            await raw.close()
        stored = fetched[1]
        assert b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"' in stored
        assert b"line of text 7" not in stored and b"Subject: [...]\r\n" in stored
        header, body = split_entity(decrypt("gpg", stored, key, tmp_path))
        assert body == split_entity(draft)[1]
        assert b"\r\nSubject: message 7\r\n" in header
    finally:
        stop_agent(key)


@pytest.mark.skipif(
    dovecot_support.available() is not None, reason=str(dovecot_support.available())
)
async def test_pgp_mime_described_as_dovecot_does(databases, tls_files, tls_ca) -> None:
    cert = pysequoia.Tsk.generate("<oracle@pgp-imap.test>").extract_certificate()
    box = await _keyed_box(databases, "oracle@pgp-imap.test", str(cert).encode())
    stored = [
        openpgp.encrypt_message(plain_message(number, size=size), [cert]).message
        for number, size in ((1, 200), (2, 20_000))
    ]
    conn = await databases.connect()
    try:
        for body in stored:
            await messages.insert_message(conn, vaultbox_id=box.vaultbox.id, body=body)
    finally:
        await conn.close()
    theirs, ours = await fetch_from_both(databases, tls_files, tls_ca, box, stored, ITEMS)
    assert b'"encrypted"' in theirs[(1, "BODYSTRUCTURE")]
    differences = [(key, theirs[key], ours[key]) for key in theirs if theirs[key] != ours[key]]
    assert not differences, differences


ORIGINAL = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: fetched@pgp-imap.test\r\n"
    b"Cc: Carol <carol@sender.test>\r\n"
    b"Bcc: hidden@sender.test\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= numbers\r\n"
    b"Message-ID: <fetched@sender.test>\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Custom: kept\r\n"
    b"\r\n"
    b"caf\xc3\xa9\r\n.leading dot\r\n"
)


# Structural fields and the trace fields added in transit get no HP-Outer copy.
_NO_COPY = (b"MIME-Version:", b"Content-Type:", b"Return-Path:", b"Received:")


def header_fields(header: bytes) -> list[bytes]:
    """The fields of a header block, each with its folding, without the final CRLF."""
    return re.split(rb"\r\n(?![ \t])", header.rstrip(b"\r\n"))


@pytest.mark.parametrize("kind", ["nistp384", "sq-cv25519"])
async def test_delivered_mail_fetched_over_imap_decrypts_with_every_tool(
    databases, tls_files, tls_ca, tmp_path, kind
) -> None:
    """LMTP in, IMAP FETCH BODY[] out: the served bytes are the stored ones, and GnuPG, sq
    and RNP each read from them the original header fields in order and the body byte for
    byte, plus the trace fields the intake added and RFC 9788's HP-Outer copies of the clear
    fields (trace fields are in clear without one); the Content-Type carries hp="cipher"."""
    address = f"fetched-{kind}@pgp-imap.test"
    original = ORIGINAL.replace(b"fetched@pgp-imap.test", address.encode())
    key = make_any_key(address, kind)
    try:
        box = await _keyed_box(databases, address, key.public)
        intake = intake_config(databases)
        async with running_intake(intake):
            client = await LMTPClient.connect(port_of(intake))
            assert (await client.command("LHLO client.test")).startswith("250")
            rcpt, replies = await client.transaction("alice@sender.test", [address], original)
            await client.close()
        assert rcpt[0].startswith("250") and replies[0].startswith("250"), (rcpt, replies)
        [row] = await stored_messages(databases, box.vaultbox)
        cfg = imap_config(databases, tls_files)
        async with running_imap(cfg):
            raw = await RawClient.connect(ports(cfg)[1], tls_ca)
            await raw.login(box)
            await raw.command("s", "SELECT INBOX")
            fetched = await raw.command("f", "UID FETCH 1 (BODY[])")
            flags = await raw.command("g", "UID FETCH 1 (FLAGS)")
            await raw.close()
        assert fetched[1] == row["body_encrypted"]
        assert b"\\Seen" in flags[0]
        outer = header_fields(split_entity(fetched[1])[0])
        original_header, original_body = split_entity(original)
        original_fields = header_fields(original_header)
        for tool in TOOLS:
            header, body = split_entity(decrypt(tool, fetched[1], key, tmp_path))
            assert body == original_body, tool
            fields = header_fields(header)
            assert fields[0] == (
                b'Content-Type: text/plain; charset=utf-8;\r\n hp="cipher"; protected-headers="v1"'
            ), tool
            trace = [f for f in fields if f.startswith((b"Return-Path:", b"Received:"))]
            assert trace[0] == b"Return-Path: <alice@sender.test>", tool
            assert trace[1].startswith(b"Received: from "), tool
            copies = [f for f in fields if f.startswith(b"HP-Outer: ")]
            assert copies == [b"HP-Outer: " + f for f in outer if not f.startswith(_NO_COPY)], tool
            rest = [f for f in fields[1:] if f not in trace and f not in copies]
            assert rest == [f for f in original_fields if not f.startswith(b"Content-Type:")], tool
    finally:
        stop_agent(key)
