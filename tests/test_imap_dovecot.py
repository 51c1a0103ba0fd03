"""Dovecot as the oracle: for a varied corpus, our ENVELOPE, BODYSTRUCTURE, BODY,
RFC822.SIZE and body sections are byte-for-byte what Dovecot 2.3 sends for the same messages."""

from __future__ import annotations

import asyncio

import pytest

from tests import dovecot_support
from tests.imap_corpus import CORPUS
from tests.imap_support import (
    RawClient,
    encrypt_for,
    imap_config,
    make_box,
    plain_message,
    ports,
    running_imap,
    store,
)

ITEMS = (
    "ENVELOPE",
    "BODYSTRUCTURE",
    "BODY",
    "RFC822.SIZE",
    "BODY.PEEK[HEADER]",
    "BODY.PEEK[TEXT]",
    "BODY.PEEK[1]",
    "BODY.PEEK[1.MIME]",
    "BODY.PEEK[1.HEADER]",
    "BODY.PEEK[1.TEXT]",
    "BODY.PEEK[4.HEADER]",
    "BODY.PEEK[9]",
    "BODY.PEEK[1.9]",
    "BODY.PEEK[HEADER.FIELDS (From Subject)]",
    "BODY.PEEK[HEADER.FIELDS.NOT (Subject)]",
)

pytestmark = pytest.mark.skipif(
    dovecot_support.available() is not None, reason=str(dovecot_support.available())
)


async def _responses(client: RawClient, count: int) -> dict[tuple[int, str], bytes]:
    found = {}
    for seq in range(1, count + 1):
        for item in ITEMS:
            reply = await client.command("f", f"FETCH {seq} ({item})")
            assert reply[-1].startswith(b"f OK"), reply
            found[(seq, item)] = b"".join(reply[:-1])
    return found


async def test_fetch_metadata_matches_dovecot(databases, tls_files, tls_ca, tmp_path):
    box = await make_box(databases, "oracle@example.test", tmp_path)
    corpus = dict(CORPUS)
    corpus["smime_real"] = encrypt_for(box, plain_message(5))
    names = list(corpus)
    for name in names:
        await store(databases, box, corpus[name])
    cfg = imap_config(databases, tls_files)
    _, tls_port = ports(cfg)

    dovecot = dovecot_support.Dovecot([corpus[name] for name in names])
    await asyncio.to_thread(dovecot.start)
    try:
        theirs_client = await RawClient.connect(dovecot.port)
        await theirs_client.command("l", f"LOGIN {dovecot.user} {dovecot.password}")
        await theirs_client.command("s", "EXAMINE INBOX")
        theirs = await _responses(theirs_client, len(names))
        await theirs_client.close()
    finally:
        await asyncio.to_thread(dovecot.stop)
    async with running_imap(cfg):
        ours_client = await RawClient.connect(tls_port, tls_ca)
        await ours_client.login(box)
        await ours_client.command("s", "EXAMINE INBOX")
        ours = await _responses(ours_client, len(names))
        await ours_client.close()
    differences = [
        (names[seq - 1], item, theirs[(seq, item)], ours[(seq, item)])
        for (seq, item) in theirs
        if theirs[(seq, item)] != ours[(seq, item)]
    ]
    for name, item, theirs_text, ours_text in differences:
        print(f"== {name} {item}\n theirs: {theirs_text!r}\n ours:   {ours_text!r}")
    assert not differences, differences
