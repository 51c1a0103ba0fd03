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
from tests.openpgp_support import decrypt, make_key, stop_agent, tools_missing
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
