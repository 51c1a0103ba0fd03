"""Hostile and malformed input: SMTP smuggling probes and broken messages over LMTP."""

from __future__ import annotations

import asyncio

import pytest

from tests.intake_support import (
    LMTPClient,
    add_certificate,
    intake_config,
    openssl_decrypt,
    port_of,
    running_intake,
    stored_messages,
)
from tests.support import Databases, make_vaultbox


@pytest.fixture(scope="module")
def box(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> dict:
    async def make() -> dict:
        made = await make_vaultbox(databases, "inbox@vault.test")
        other = await make_vaultbox(databases, "other@vault.test")
        keys = tmp_path_factory.mktemp("keys")
        await add_certificate(databases, other.vaultbox, keys)
        return {
            "vaultbox": made.vaultbox,
            "key": await add_certificate(databases, made.vaultbox, keys),
        }

    return asyncio.run(make())


@pytest.fixture
async def client(databases: Databases):
    cfg = intake_config(databases)
    async with running_intake(cfg):
        lmtp = await LMTPClient.connect(port_of(cfg))
        await lmtp.command("LHLO probe.test")
        try:
            yield lmtp
        finally:
            await lmtp.close()


@pytest.mark.parametrize(
    "probe",
    [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"],
    ids=["LF.LF", "CR.CR", "CRLF.LF", "LF.CRLF", "CR.CRLF"],
)
async def test_smuggling_probes_do_not_split_a_message(databases, box, client, probe):
    before = len(await stored_messages(databases, box["vaultbox"]))
    smuggled = (
        b"Subject: outer\r\n\r\nfirst part"
        + probe
        + b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<inbox@vault.test>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nsmuggled body\r\n"
    )
    await client.command("MAIL FROM:<a@sender.test>")
    await client.command("RCPT TO:<inbox@vault.test>")
    assert (await client.command("DATA")).startswith("354")
    client.writer.write(smuggled + b".\r\n")
    reply = await client.reply()
    assert reply[-1].startswith("250 2.0.0")
    # Nothing more is pending: the next command's reply is its own.
    assert (await client.command("NOOP")).startswith("250")
    stored = await stored_messages(databases, box["vaultbox"])
    assert len(stored) == before + 1
    plain = openssl_decrypt(bytes(stored[-1]["body_encrypted"]), box["key"])
    assert b"MAIL FROM:<evil@attacker.test>" in plain
    assert b"smuggled body" in plain


BROKEN = {
    "nul-bytes": b"Subject: a\x00b\r\nFrom: x@y.test\r\n\r\nbody\x00with nul\r\n",
    "8bit-headers": "Subject: Grüße aus Köln\r\nFrom: Jürgen <j@y.test>\r\n\r\nHallo\r\n".encode(
        "latin-1"
    ),
    "no-headers": b"just a body line\r\nand another\r\n",
    "empty-header": b"\r\nonly a body after an empty line\r\n",
    "invalid-base64": (
        b"Subject: b64\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not*base64===\r\n%%%\r\n"
    ),
    "broken-multipart": (
        b'Subject: mp\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="zz"\r\n'
        b"\r\npreamble\r\n--zz\r\nContent-Type: text/plain\r\n\r\npart one\r\n--zz\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n\x00\xff binary bytes\r\n--wrong--\r\n"
    ),
    "no-boundary": (
        b"Subject: mp2\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\nno parts\r\n"
    ),
}


@pytest.mark.parametrize("name", list(BROKEN))
async def test_broken_message_is_stored_encrypted(databases, box, client, name):
    raw = BROKEN[name]
    before = len(await stored_messages(databases, box["vaultbox"]))
    _, data = await client.transaction("a@sender.test", ["inbox@vault.test"], raw)
    assert data[0].startswith("250 2.0.0"), data
    stored = await stored_messages(databases, box["vaultbox"])
    assert len(stored) == before + 1
    plain = openssl_decrypt(bytes(stored[-1]["body_encrypted"]), box["key"])
    last_line = raw.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
    assert last_line in plain


async def test_overlong_line_is_refused_once_per_recipient(databases, box, client):
    before = len(await stored_messages(databases, box["vaultbox"]))
    raw = b"Subject: long\r\nX-Long: " + b"a" * 1_000_000 + b"\r\n\r\nbody\r\n"
    rcpt, data = await client.transaction(
        "a@sender.test", ["inbox@vault.test", "other@vault.test"], raw
    )
    assert rcpt == [rcpt[0]] * 2 and rcpt[0].startswith("250")
    assert [line[:9] for line in data] == ["500 5.5.2", "500 5.5.2"]
    # The session and the server carry on.
    fresh = b"Subject: after the long line\r\n\r\nstill here\r\n"
    _, data = await client.transaction("a@sender.test", ["inbox@vault.test"], fresh)
    assert data[0].startswith("250")
    assert len(await stored_messages(databases, box["vaultbox"])) == before + 1
