"""Hostile structure as IMAP serves it. Already-encrypted mail and APPENDed mail are stored
as they are, so their structure is what ENVELOPE and BODYSTRUCTURE describe:

- at Dovecot's limits (99 nesting levels, 10,000 parts) and beyond, and for each hostile case
  of tests/hostile_mail, the answer is Dovecot's;
- FETCH and SEARCH on every case answer OK, and what FETCH sends grows at most linearly with
  the message (the structure limits cap it)."""

from __future__ import annotations

import threading

import pytest

from encimap import mimeinfo
from tests import dovecot_support, hostile_mail
from tests.imap_support import (
    LONG_LINES,
    RawClient,
    fetch_from_both,
    imap_config,
    make_box,
    ports,
    running_imap,
    store,
)

ITEMS = ("ENVELOPE", "BODYSTRUCTURE", "BODY")
LIMITS = {
    "nested-98": hostile_mail.nested_multipart(98),
    "nested-99": hostile_mail.nested_multipart(99),
    "nested-150": hostile_mail.nested_multipart(150),
    "messages-98": hostile_mail.nested_message(98),
    "messages-150": hostile_mail.nested_message(150),
    "parts-9999": hostile_mail.many_parts(9_998),
    "parts-10000": hostile_mail.many_parts(9_999),
    "parts-12000": hostile_mail.many_parts(12_000),
    # the last part runs to the end of the message, past its own multipart
    "parts-12000-inside": (
        hostile_mail.HEAD
        + b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n"
        + hostile_mail.many_parts(12_000).split(b"MIME-Version: 1.0\r\n", 1)[1]
        + b"--o\r\nContent-Type: text/html\r\n\r\nafter\r\n--o--\r\n"
    ),
}
# How Dovecot and encimap still differ on these, and why (see docs/imap.md).
KNOWN_DIFFERENCES = {
    "nul-and-8bit": "Dovecot's address parser stops at a NUL in the From field",
}


@pytest.mark.skipif(
    dovecot_support.available() is not None, reason=str(dovecot_support.available())
)
async def test_hostile_structure_matches_dovecot(databases, tls_files, tls_ca, tmp_path):
    corpus = dict(LIMITS)
    corpus.update({name: build(n) for name, (build, n) in hostile_mail.CASES.items()})
    names = list(corpus)
    box = await make_box(databases, "limits@example.test", tmp_path)
    for name in names:
        await store(databases, box, corpus[name])
    stored = [corpus[name] for name in names]
    theirs, ours = await fetch_from_both(databases, tls_files, tls_ca, box, stored, ITEMS)
    differences = {
        (names[seq - 1], item): (theirs[(seq, item)][-300:], ours[(seq, item)][-300:])
        for seq, item in theirs
        if theirs[(seq, item)] != ours[(seq, item)]
    }
    assert {name for name, _ in differences} == set(KNOWN_DIFFERENCES), differences


SEARCHES = (
    'FROM "sender"',
    'SUBJECT "w w w"',
    'TO "someone"',
    'TEXT "nowhere-to-be-found"',
    'BODY "x"',
    'HEADER X-Field "value"',
    'OR FROM "r1@" SUBJECT "pfel"',
)


async def test_fetch_and_search_on_hostile_messages(databases, tls_files, tls_ca, tmp_path):
    box = await make_box(databases, "hostile-imap@example.test", tmp_path)
    order = []
    for factor in (1, 4):
        for name, (build, n) in hostile_mail.CASES.items():
            await store(databases, box, build(n * factor))
            order.append((name, factor))
    cfg = imap_config(databases, tls_files)
    async with running_imap(cfg):
        client = await RawClient.connect(ports(cfg)[1], tls_ca, limit=LONG_LINES)
        await client.login(box)
        assert (await client.command("s", "EXAMINE INBOX"))[-1].startswith(b"s OK")
        sent: dict[tuple[str, int], int] = {}
        for seq, key in enumerate(order, 1):
            reply = await client.command(
                "f", f"FETCH {seq} (ENVELOPE BODYSTRUCTURE BODY.PEEK[1.MIME] BODY.PEEK[1])"
            )
            assert reply[-1].startswith(b"f OK"), (key, reply[-1])
            sent[key] = sum(len(line) for line in reply)
        for search in SEARCHES:
            reply = await client.command("q", f"SEARCH {search}")
            assert reply[-1].startswith(b"q OK"), (search, reply[-1])
        matches = (await client.command("q", 'SEARCH FROM "sender@example.org"'))[0]
        assert len(matches.split()) > 2 * len(hostile_mail.CASES) - 4, matches
        await client.close()
    for name in hostile_mail.CASES:
        assert sent[(name, 4)] <= 4.4 * sent[(name, 1)] + 1000, (name, sent)


async def test_a_large_append_is_described_off_the_event_loop(
    databases, tls_files, tls_ca, tmp_path, monkeypatch
):
    """Already-encrypted mail is stored as it is, so APPEND describes the client's bytes: a
    hostile structure of tens of megabytes costs seconds, which must not stall the event
    loop every session of the process shares."""
    box = await make_box(databases, "append-hostile@example.test", tmp_path)
    threads: list[tuple[int, bool]] = []
    describe = mimeinfo.describe

    def spy(data: bytes) -> mimeinfo.MessageInfo:
        threads.append((len(data), threading.current_thread() is threading.main_thread()))
        return describe(data)

    monkeypatch.setattr(mimeinfo, "describe", spy)
    message = hostile_mail.many_parts(20_000, media=b"multipart/encrypted")
    cfg = imap_config(databases, tls_files)
    async with running_imap(cfg):
        client = await RawClient.connect(ports(cfg)[1], tls_ca)
        await client.login(box)
        reply = await client.command("a", b"APPEND INBOX {%d+}\r\n" % len(message) + message)
        assert reply[-1].startswith(b"a OK"), reply[-1]
        await client.close()
    assert (len(message), False) in threads, threads
    assert (len(message), True) not in threads, threads


async def test_a_10_mb_header_line_by_append(databases, tls_files, tls_ca, tmp_path):
    """Only APPEND can bring a line like this (SMTP ends lines at 1,000 octets): it is stored,
    and ENVELOPE serves the Subject whole (a quoted string of 10 MB, as Dovecot would)."""
    box = await make_box(databases, "append-long@example.test", tmp_path)
    subject = b"s" * 10_000_000
    message = (
        b"From: a@example.org\r\nSubject: " + subject + b"\r\nContent-Type: multipart/encrypted;"
        b" boundary=x\r\n\r\n--x\r\n\r\nbody\r\n--x--\r\n"
    )
    cfg = imap_config(databases, tls_files)
    async with running_imap(cfg):
        client = await RawClient.connect(ports(cfg)[1], tls_ca, limit=LONG_LINES)
        await client.login(box)
        reply = await client.command("a", b"APPEND INBOX {%d+}\r\n" % len(message) + message)
        assert reply[-1].startswith(b"a OK"), reply[-1]
        await client.command("s", "EXAMINE INBOX")
        reply = await client.command("f", "FETCH 1 (ENVELOPE BODYSTRUCTURE)")
        assert reply[-1].startswith(b"f OK"), reply[-1]
        assert subject in b"".join(reply)
        await client.close()
