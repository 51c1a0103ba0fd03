"""Dovecot as the oracle: for a varied corpus, our ENVELOPE, BODYSTRUCTURE, BODY,
RFC822.SIZE and body sections are byte-for-byte what Dovecot 2.3 sends for the same messages."""

from __future__ import annotations

import pytest

from tests import dovecot_support
from tests.imap_corpus import CORPUS
from tests.imap_support import (
    encrypt_for,
    fetch_from_both,
    make_box,
    plain_message,
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


async def test_fetch_metadata_matches_dovecot(databases, tls_files, tls_ca, tmp_path):
    box = await make_box(databases, "oracle@example.test", tmp_path)
    corpus = dict(CORPUS)
    corpus["smime_real"] = encrypt_for(box, plain_message(5))
    names = list(corpus)
    for name in names:
        await store(databases, box, corpus[name])
    stored = [corpus[name] for name in names]
    theirs, ours = await fetch_from_both(databases, tls_files, tls_ca, box, stored, ITEMS)
    differences = [
        (names[seq - 1], item, theirs[(seq, item)], ours[(seq, item)])
        for (seq, item) in theirs
        if theirs[(seq, item)] != ours[(seq, item)]
    ]
    for name, item, theirs_text, ours_text in differences:
        print(f"== {name} {item}\n theirs: {theirs_text!r}\n ours:   {ours_text!r}")
    assert not differences, differences
