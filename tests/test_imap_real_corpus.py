"""ENVELOPE and BODYSTRUCTURE of real-world messages equal Dovecot's: the messages CPython's
email package tests itself with (Lib/test/test_email/data, where the Python installation ships
its tests), with CRLF line endings as SMTP delivers them. Skipped without those files or
without Dovecot."""

from __future__ import annotations

import asyncio
import sysconfig
from pathlib import Path

import pytest

from tests import dovecot_support
from tests.imap_support import RawClient, imap_config, make_box, ports, running_imap, store

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


async def _answers(client: RawClient, count: int) -> dict[tuple[int, str], bytes]:
    found = {}
    for seq in range(1, count + 1):
        for item in ITEMS:
            reply = await client.command("f", f"FETCH {seq} ({item})")
            assert reply[-1].startswith(b"f OK"), reply
            found[(seq, item)] = b"".join(reply[:-1])
    return found


async def test_real_messages_match_dovecot(databases, tls_files, tls_ca, tmp_path):
    corpus = _corpus()
    names = list(corpus)
    box = await make_box(databases, "corpus@example.test", tmp_path)
    for name in names:
        await store(databases, box, corpus[name])
    dovecot = dovecot_support.Dovecot([corpus[name] for name in names])
    await asyncio.to_thread(dovecot.start)
    try:
        theirs_client = await RawClient.connect(dovecot.port)
        await theirs_client.command("l", f"LOGIN {dovecot.user} {dovecot.password}")
        await theirs_client.command("s", "EXAMINE INBOX")
        theirs = await _answers(theirs_client, len(names))
        await theirs_client.close()
    finally:
        await asyncio.to_thread(dovecot.stop)
    cfg = imap_config(databases, tls_files)
    async with running_imap(cfg):
        client = await RawClient.connect(ports(cfg)[1], tls_ca)
        await client.login(box)
        await client.command("s", "EXAMINE INBOX")
        ours = await _answers(client, len(names))
        await client.close()
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
