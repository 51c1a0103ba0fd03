"""BINARY (RFC 3516) and CATENATE (RFC 4469) over real TLS sockets: the decoded parts of the
stored (encrypted) message, literal8 APPEND and CATENATE assembled, encrypted and decrypted
again with `openssl cms`, bad URLs, limits, and Dovecot as the oracle for BINARY."""

from __future__ import annotations

import base64
import re
import subprocess
import tracemalloc

import pytest

from tests import dovecot_support
from tests.imap_corpus import CORPUS
from tests.imap_support import (
    RawClient,
    encrypt_for,
    fetch_from_both,
    imap_config,
    make_box,
    plain_message,
    ports,
    read_fetch_streaming,
    running_imap,
    store,
)
from tests.intake_support import openssl_decrypt
from tests.support import set_limits

BINARY_PART = b"\x00\xed\r\n\x01binary\rpart\n\xff" * 40


@pytest.fixture
def cfg(databases, tls_files):
    return imap_config(databases, tls_files)


async def _session(cfg, box, tls_ca) -> RawClient:
    client = await RawClient.connect(ports(cfg)[1], tls_ca)
    await client.login(box)
    return client


def _literal_after(lines: list[bytes], head: bytes) -> bytes:
    """The literal that follows the line ending in `head {n}` / `head ~{n}`."""
    for index, line in enumerate(lines):
        if re.search(re.escape(head) + rb" ~?\{\d+\}\r\n$", line):
            return lines[index + 1]
    raise AssertionError(f"no {head!r} in {lines!r}")


async def _stored(databases, box) -> dict[str, list[dict]]:
    """Mailbox name -> its stored rows (body, flags) in UID order."""
    conn = await databases.connect()
    try:
        rows = await conn.fetch(
            """SELECT m.name, e.body, e.flags FROM encrypted_emails e
                 JOIN mailboxes m ON m.id = e.mailbox_id
                WHERE e.vaultbox_id = $1 ORDER BY m.name, e.uid""",
            box.id,
        )
    finally:
        await conn.close()
    found: dict[str, list[dict]] = {}
    for row in rows:
        found.setdefault(row["name"], []).append(dict(row))
    return found


def _smime_der(stored: bytes) -> bytes:
    return base64.b64decode(b"".join(stored.partition(b"\r\n\r\n")[2].split()))


async def test_binary_fetch_decodes_the_stored_smime_part(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "binary@example.test", tmp_path)
    plain = plain_message(1, size=3000)
    stored = encrypt_for(box, plain)
    await store(databases, box, stored)
    der = _smime_der(stored)
    async with running_imap(cfg):
        client = await _session(cfg, box, tls_ca)
        await client.command("s", "SELECT INBOX")
        reply = await client.command("f", "FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1] FLAGS)")
        assert reply[-1].startswith(b"f OK"), reply
        assert b"BINARY.SIZE[1] %d " % len(der) in reply[0]
        assert reply[0].endswith(b"BINARY[1] ~{%d}\r\n" % len(der)), reply[0]  # DER has NUL
        assert reply[1] == der
        assert b"\\Seen" not in reply[2]  # PEEK
        reply = await client.command("p", "FETCH 1 (BINARY.PEEK[1]<10.20> BINARY.SIZE[])")
        assert _literal_after(reply, b"BINARY[1]<10>") == der[10:30]
        whole = await client.command("w", "FETCH 1 BINARY.PEEK[]")
        header = stored.partition(b"\r\n\r\n")[0].replace(
            b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: binary"
        )
        assert _literal_after(whole, b"BINARY[]") == header + b"\r\n\r\n" + der
        size = re.search(rb"BINARY.SIZE\[\] (\d+)", b"".join(reply))
        assert size is not None and int(size[1]) == len(header) + 4 + len(der)
        # a part the message does not have is empty, as in Dovecot
        reply = await client.command("m", "FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[1.1])")
        assert b"BINARY[2] {0}" in reply[0] and b"BINARY.SIZE[1.1] 0" in reply[2], reply
        # BINARY without PEEK sets \Seen, BINARY.SIZE does not
        reply = await client.command("z", "FETCH 1 BINARY.SIZE[1]")
        assert b"\\Seen" not in b"".join(reply)
        reply = await client.command("b", "FETCH 1 BINARY[1]<0.5>")
        assert b"\\Seen" in b"".join(reply), reply
        for bad in ("BINARY[1.MIME]", "BINARY[HEADER]", "BINARY.SIZE[1]<0.5>"):
            reply = await client.command("x", f"FETCH 1 {bad}")
            assert reply[-1].startswith(b"x BAD"), (bad, reply)
        await client.close()
    # BINARY[1] is the CMS structure openssl reads from the S/MIME message, byte for byte
    structure = subprocess.run(
        ["openssl", "cms", "-cmsout", "-inform", "SMIME", "-outform", "DER"],
        input=stored,
        capture_output=True,
        check=True,
    ).stdout
    assert structure == der
    # and what the client decrypts from it is what it decrypts from the message
    opened = subprocess.run(
        ["openssl", "cms", "-decrypt", "-inform", "DER", "-binary", "-inkey", str(box.key_path)],
        input=der,
        capture_output=True,
        check=True,
    ).stdout
    assert opened == openssl_decrypt(stored, box.key_path)
    assert b"line of text 1" in opened


async def test_binary_decodes_quoted_printable_and_refuses_unknown_encodings(
    databases, cfg, tls_ca, tmp_path
):
    box = await make_box(databases, "cte@example.test", tmp_path)
    parts = (
        b"--b\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"caf=C3=A9  \r\nsoft=\r\nbreak\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: x-uuencode"
        b"\r\n\r\nbegin 644 x\r\n"
        b"--b--\r\n"
    )
    message = b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + parts
    await store(databases, box, message)
    async with running_imap(cfg):
        client = await _session(cfg, box, tls_ca)
        await client.command("s", "SELECT INBOX")
        reply = await client.command("q", "FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])")
        assert _literal_after(reply, b"BINARY[1]") == "café\r\nsoftbreak".encode()
        reply = await client.command("u", "FETCH 1 (UID BINARY.PEEK[2])")
        assert reply == [b"u NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding x-uuencode\r\n"]
        reply = await client.command("v", "FETCH 1 BINARY.SIZE[2]")
        assert reply[-1].startswith(b"v NO [UNKNOWN-CTE]"), reply
        reply = await client.command("w", "FETCH 1 BODY.PEEK[2]")  # BODY is unaffected
        assert reply[-1].startswith(b"w OK"), reply
        # BINARY[] of the multipart: the quoted-printable leaf decoded, the other refused
        reply = await client.command("a", "FETCH 1 BINARY.PEEK[]")
        assert reply[-1].startswith(b"a NO [UNKNOWN-CTE]"), reply
        await client.close()


@pytest.mark.skipif(dovecot_support.available() is not None, reason="no Dovecot oracle")
async def test_binary_equals_dovecot_on_stored_envelopes(databases, tls_files, tls_ca, tmp_path):
    box = await make_box(databases, "oracle-binary@example.test", tmp_path)
    stored = [encrypt_for(box, plain_message(n, size=200 + 900 * n)) for n in range(3)]
    for body in stored:
        await store(databases, box, body)
    items = [
        "BINARY.PEEK[1]",
        "BINARY.SIZE[1]",
        "BINARY.PEEK[]",
        "BINARY.SIZE[]",
        "BINARY.PEEK[1]<7.100>",
        "BINARY.PEEK[1]<99999.10>",
        "BINARY.PEEK[2]",
        "BINARY.SIZE[2]",
    ]
    theirs, ours = await fetch_from_both(databases, tls_files, tls_ca, box, stored, items)
    assert ours == theirs


@pytest.mark.skipif(dovecot_support.available() is not None, reason="no Dovecot oracle")
async def test_binary_equals_dovecot_on_mime_structures(databases, tls_files, tls_ca, tmp_path):
    """Multipart, nested message/rfc822, base64 and quoted-printable leaves (the corpus the
    ENVELOPE/BODYSTRUCTURE tests use), stored as they are."""
    box = await make_box(databases, "oracle-structures@example.test", tmp_path)
    stored = list(CORPUS.values())
    for body in stored:
        await store(databases, box, body)
    items = [
        "BINARY.PEEK[]",
        "BINARY.SIZE[]",
        "BINARY.PEEK[1]",
        "BINARY.SIZE[1]",
        "BINARY.PEEK[2]",
        "BINARY.SIZE[2]",
        "BINARY.PEEK[2.1]",
        "BINARY.PEEK[2.2]",
        "BINARY.PEEK[3]",
        "BINARY.PEEK[1]<3.20>",
        "BODY.PEEK[2.1]",
        "BODY.PEEK[1.1]",
    ]
    theirs, ours = await fetch_from_both(databases, tls_files, tls_ca, box, stored, items)
    different = {key: (theirs[key], ours[key]) for key in theirs if theirs[key] != ours[key]}
    assert not different, different


async def test_literal8_append_is_stored_encrypted(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "literal8@example.test", tmp_path)
    message = (
        b"From: a@example.org\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        + BINARY_PART
    )
    async with running_imap(cfg):
        client = await _session(cfg, box, tls_ca)
        await client.send(b"a APPEND Drafts ~{%d}\r\n" % len(message))
        assert (await client.line()).startswith(b"+ ")
        await client.send(message + b"\r\n")
        reply = await client.until("a")
        assert reply[-1].startswith(b"a OK [APPENDUID"), reply
        reply = await client.command("b", b"APPEND Drafts ~{%d+}\r\n" % len(message) + message)
        assert reply[-1].startswith(b"b OK [APPENDUID"), reply
        # NUL stays refused outside a literal8
        reply = await client.command("c", b"APPEND Drafts {%d+}\r\n" % len(message) + message)
        assert reply[-1].startswith(b"c BAD"), reply
        await client.close()
    rows = (await _stored(databases, box))["Drafts"]
    assert len(rows) == 2
    for row in rows:
        assert BINARY_PART not in row["body"]
        assert b"application/pkcs7-mime" in row["body"]
        opened = openssl_decrypt(row["body"], box.key_path)
        assert opened.endswith(b"\r\n\r\n" + BINARY_PART), opened[-200:]


async def _append(client: RawClient, tag: str, head: str, *pieces: bytes | str) -> list[bytes]:
    """`tag APPEND head` with `pieces`: bytes as a LITERAL+ literal, str as they are."""
    command = f"APPEND {head}".encode()
    for piece in pieces:
        command += piece.encode() if isinstance(piece, str) else b"{%d+}\r\n" % len(piece) + piece
    return await client.command(tag, command)


async def test_catenate_text_and_urls(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "catenate@example.test", tmp_path)
    source = encrypt_for(box, plain_message(7, size=2000))
    inserted = await store(databases, box, source)
    header = b"From: me@example.org\r\nSubject: assembled\r\n\r\n"
    inbox = f"/INBOX;UIDVALIDITY={inserted.uidvalidity}/;UID={inserted.uid}"
    async with running_imap(cfg):
        client = await _session(cfg, box, tls_ca)
        reply = await _append(
            client,
            "a",
            "Drafts (\\Draft) CATENATE (TEXT ",
            header,
            f' URL "{inbox}/;SECTION=1/;PARTIAL=0.100" TEXT ',
            b"\r\nthe end\r\n",
            ")",
        )
        assert reply[-1].startswith(b"a OK [APPENDUID"), reply
        # the whole stored (encrypted) message: stored as it is, not encrypted twice; with
        # MULTIAPPEND a plain literal and a relative URL next to it
        await client.command("s", "SELECT INBOX")
        reply = await _append(
            client,
            "b",
            f'Sent CATENATE (URL "{inbox}") CATENATE (URL ";UID={inserted.uid}/;SECTION=HEADER" '
            "TEXT ",
            b"plain body\r\n",
            ") ",
            plain_message(8),
        )
        assert re.match(rb"b OK \[APPENDUID \d+ 1:3\]", reply[-1]), reply
        # with BINARY, a TEXT part may be a literal8 (NUL and all)
        binary_header = b"From: me@example.org\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        text8 = b"~{%d+}\r\n" % len(binary_header + BINARY_PART) + binary_header + BINARY_PART
        reply = await client.command("c", b"APPEND Junk CATENATE (TEXT " + text8 + b")")
        assert reply[-1].startswith(b"c OK [APPENDUID"), reply
        await client.close()
    stored = await _stored(databases, box)
    [junk] = stored["Junk"]
    assert BINARY_PART not in junk["body"]
    assert openssl_decrypt(junk["body"], box.key_path).endswith(b"\r\n\r\n" + BINARY_PART)
    [drafts] = stored["Drafts"]
    copy, second, third = stored["Sent"]
    opened = openssl_decrypt(drafts["body"], box.key_path)
    expected_body = source.partition(b"\r\n\r\n")[2][:100] + b"\r\nthe end\r\n"
    assert opened.endswith(expected_body), opened
    assert b"From: me@example.org" in opened
    assert drafts["flags"] == ["\\Draft"]
    assert copy["body"] == source
    # the stored header says pkcs7-mime: that text is taken as encrypted, as any APPEND's
    assert second["body"] == source.partition(b"\r\n\r\n")[0] + b"\r\n\r\nplain body\r\n"
    assert b"line of text 8" in openssl_decrypt(third["body"], box.key_path)


async def test_catenate_bad_urls_and_limits(databases, tls_files, tls_ca, tmp_path):
    cfg = imap_config(databases, tls_files, max_catenate_parts=3, max_literal_size=6000)
    box = await make_box(databases, "badurl@example.test", tmp_path)
    other = await make_box(databases, "other@example.test", tmp_path)
    source = encrypt_for(box, plain_message(1, size=1500))
    inserted = await store(databases, box, source)
    await store(databases, other, encrypt_for(other, plain_message(2)))
    valid = f"/INBOX/;UID={inserted.uid}"
    bad_urls = [
        f"/INBOX;UIDVALIDITY={inserted.uidvalidity + 1}/;UID={inserted.uid}",
        f"/INBOX/;UID={inserted.uid + 1}",
        f"{valid}/;SECTION=3",
        f"{valid}/;SECTION=NOSUCH",
        "/Nowhere/;UID=1",
        f"imap://{other.username}@localhost/INBOX/;UID=1",
        f"imap://localhost/INBOX/;UID={inserted.uid}",
        f"{valid}/;URLAUTH=anonymous:internal:0123",
        f";UID={inserted.uid}",  # relative, but nothing is selected
    ]
    async with running_imap(cfg):
        client = await _session(cfg, box, tls_ca)
        for index, url in enumerate(bad_urls):
            reply = await _append(
                client, f"u{index}", "Drafts CATENATE (TEXT ", b"A: b\r\n", f' URL "{url}")'
            )
            assert reply[-1].startswith(f'u{index} NO [BADURL "{url}"]'.encode()), reply
        reply = await _append(client, "t", f'Nowhere CATENATE (URL "{bad_urls[0]}")')
        assert reply[-1].startswith(b"t NO [TRYCREATE]"), reply
        reply = await _append(client, "o", f'Drafts CATENATE (URL "{valid}")')
        assert reply[-1].startswith(b"o OK"), reply
        own = f"imap://{box.username}@localhost/INBOX/;UID={inserted.uid}"
        reply = await _append(client, "i", f'Drafts CATENATE (URL "{own}")')
        assert reply[-1].startswith(b"i OK"), reply
        # limits: parts per APPEND (over all its messages), and the assembled size
        reply = await _append(
            client, "l", f'Drafts CATENATE (URL "{valid}" URL "{valid}") CATENATE (TEXT ',
            b"x: y\r\n", f' URL "{valid}")',
        )  # fmt: skip
        assert reply[-1].startswith(b"l NO [LIMIT]"), reply
        assert 3000 < len(source) <= 6000
        reply = await _append(client, "z", f'Drafts CATENATE (URL "{valid}" URL "{valid}")')
        assert reply[-1].startswith(b"z NO [TOOBIG]"), reply
        # each message is within the limit, not both together (MULTIAPPEND)
        reply = await _append(
            client, "y", f'Drafts CATENATE (URL "{valid}") CATENATE (URL "{valid}")'
        )
        assert reply[-1].startswith(b"y NO [TOOBIG]"), reply
        for syntax in ("CATENATE ()", "CATENATE (URL)", 'CATENATE (FILE "x")', "CATENATE"):
            reply = await _append(client, "x", f"Drafts {syntax}")
            assert reply[-1].startswith(b"x BAD"), (syntax, reply)
        await client.close()
    stored = await _stored(databases, box)
    assert [row["body"] for row in stored["Drafts"]] == [source] * 2
    assert [len(rows) for rows in (await _stored(databases, other)).values()] == [1]


async def test_capabilities_name_binary_and_catenate(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "caps@example.test", tmp_path)
    async with running_imap(cfg):
        client = await _session(cfg, box, tls_ca)
        reply = await client.command("c", "CAPABILITY")
        assert {b"BINARY", b"CATENATE"} <= set(reply[0].split()), reply
        await client.close()


async def test_catenate_counts_against_the_quota(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "catenate-quota@example.test", tmp_path)
    source = encrypt_for(box, plain_message(1, size=1000))
    inserted = await store(databases, box, source)
    await set_limits(databases, box.id, {"max_bytes": 3 * len(source) + 100})
    url = f"/INBOX/;UID={inserted.uid}"
    async with running_imap(cfg):
        client = await _session(cfg, box, tls_ca)
        reply = await _append(client, "a", f'Drafts CATENATE (URL "{url}")')
        assert reply[-1].startswith(b"a OK"), reply
        reply = await _append(client, "b", f'Drafts CATENATE (URL "{url}" TEXT ', b"x\r\n", ")")
        assert reply[-1].startswith(b"b OK"), reply  # the header says encrypted: as it is
        reply = await _append(client, "c", f'Drafts CATENATE (URL "{url}")')
        assert reply[-1].startswith(b"c NO [OVERQUOTA]"), reply
        await client.close()
    assert len((await _stored(databases, box))["Drafts"]) == 2


async def test_repeated_binary_items_are_streamed(databases, cfg, tls_ca, tmp_path):
    """Each BINARY item is decoded when its turn comes and sent in drained chunks: the
    process holds about one decoded part at a time, not the whole response."""
    box = await make_box(databases, "binary-stream@example.test", tmp_path)
    stored = encrypt_for(box, plain_message(1, size=1_000_000))
    await store(databases, box, stored)
    der = _smime_der(stored)
    peaks = {}
    async with running_imap(cfg):
        client = await _session(cfg, box, tls_ca)
        await client.command("s", "SELECT INBOX")
        await client.command("w", "FETCH 1 BINARY.SIZE[1]")  # the message is read and cached
        for repeat in (4, 40):
            tracemalloc.start()
            try:
                items = b" ".join([b"BINARY.PEEK[1]"] * repeat)
                await client.send(b"f FETCH 1 (" + items + b")\r\n")
                literals, received = await read_fetch_streaming(client, "f", der)
                _, peaks[repeat] = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert literals == repeat and received > repeat * len(der)
        await client.close()
    # ten times the items (32 MB of response) hold no more at the peak than a part or two
    assert peaks[40] < peaks[4] + 2 * len(der), (peaks, len(der))
