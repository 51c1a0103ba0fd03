"""IMAP over STARTTLS with imaplib: login, select, fetch of stored bytes that decrypt."""

from __future__ import annotations

import asyncio

import pytest

from tests.imap_support import (
    imap_config,
    login,
    make_box,
    plain_message,
    ports,
    running_imap,
    store_mail,
)
from tests.intake_support import openssl_decrypt


@pytest.fixture
def cfg(databases, tls_files):
    return imap_config(databases, tls_files)


async def test_fetch_serves_stored_bytes_that_decrypt(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "basic@example.test", tmp_path)
    stored = await store_mail(databases, box, 3)
    originals = [plain_message(n) for n in range(3)]
    port, _ = ports(cfg)

    def client_side() -> list[bytes]:
        client = login(port, tls_ca, box)
        typ, data = client.select("INBOX")
        assert typ == "OK" and data == [b"3"], data
        fetched = []
        for seq in (1, 2, 3):
            typ, data = client.fetch(str(seq), "(RFC822.SIZE BODY.PEEK[])")
            assert typ == "OK"
            fetched.append(data[0][1])
            assert b"RFC822.SIZE %d" % len(stored[seq - 1]) in data[0][0]
        client.logout()
        return fetched

    async with running_imap(cfg):
        fetched = await asyncio.to_thread(client_side)
    assert fetched == stored
    for body, original in zip(fetched, originals, strict=True):
        decrypted = openssl_decrypt(body, box.key_path)
        assert b"line of text" in decrypted
        assert original.split(b"\r\n\r\n", 1)[1] in decrypted
