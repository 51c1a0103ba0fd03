"""ENVELOPE and BODYSTRUCTURE of real-world messages equal Dovecot's: the messages CPython's
email package tests itself with (Lib/test/test_email/data, where the Python installation ships
its tests), with CRLF line endings as SMTP delivers them. Skipped without those files or
without Dovecot."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from tests import dovecot_support
from tests.imap_support import fetch_from_both, make_box, store

DATA = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"
ITEMS = ("ENVELOPE", "BODYSTRUCTURE", "BODY")
# Messages whose structure encimap still reads differently from Dovecot, and why. The only
# accepted differences; one that disappears fails the test, so the list cannot go stale.
KNOWN_DIFFERENCES = {
    "msg_15.txt": "an inner multipart reuses its parent's boundary; Dovecot nests it",
    "msg_33.txt": "RFC 2231 encoded boundary* parameter; Dovecot decodes it to split the parts",
    "msg_39.txt": "nested multiparts whose delimiter lines Dovecot matches differently",
}


def _corpus() -> dict[str, bytes]:
    found = {}
    for path in sorted(DATA.glob("msg_*.txt")):
        data = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if data.startswith(b"From ") or not data.strip():
            continue  # mbox separators are the intake's business (test_delivery_mbox_import)
        found[path.name] = data
    return found


pytestmark = [
    pytest.mark.skipif(
        dovecot_support.available() is not None, reason=str(dovecot_support.available())
    ),
    pytest.mark.skipif(not DATA.is_dir(), reason=f"no CPython email test data at {DATA}"),
]


async def test_real_messages_match_dovecot(databases, tls_files, tls_ca, tmp_path):
    corpus = _corpus()
    names = list(corpus)
    box = await make_box(databases, "corpus@example.test", tmp_path)
    for name in names:
        await store(databases, box, corpus[name])
    stored = [corpus[name] for name in names]
    theirs, ours = await fetch_from_both(databases, tls_files, tls_ca, box, stored, ITEMS)
    differing = {
        names[seq - 1] for (seq, item) in theirs if theirs[(seq, item)] != ours[(seq, item)]
    }
    differences = [
        f"{names[seq - 1]} {item}\n theirs: {theirs[(seq, item)]!r}\n ours:   {ours[(seq, item)]!r}"
        for (seq, item) in theirs
        if theirs[(seq, item)] != ours[(seq, item)] and names[seq - 1] not in KNOWN_DIFFERENCES
    ]
    assert len(names) > 40, names  # the corpus is there
    assert not differences, f"{len(differences)} differences\n" + "\n".join(differences)
    fixed = set(KNOWN_DIFFERENCES) - differing
    assert not fixed, f"equal to Dovecot now, remove from KNOWN_DIFFERENCES: {sorted(fixed)}"
