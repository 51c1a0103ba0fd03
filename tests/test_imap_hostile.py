"""A hostile client against the real IMAP service and PostgreSQL, over real sockets: input shaped
to cost the server more than its size (many tiny literals, a search of many sequence sets),
to desynchronise the command stream (a refused literal's content read as a command) or to get
a reply no client can match (an over-long line inside a command). Memory and work are counted
(tracemalloc, values handed to the store, executed lines), never timed; only work done inside
C (the regex engine, list and bytes methods) is compared as a ratio of CPU times within one
process."""

from __future__ import annotations

import asyncio
import contextlib
import email.header
import secrets
import ssl
import sys
import tracemalloc
import zlib
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encimap.imap import encodedwords
from encimap.imap import session as session_module
from encimap.imap.commands import sort, thread
from encimap.imap.selected import Selected
from encimap.store import uidsets
from tests.imap_support import (
    RawClient,
    encrypt_for,
    imap_config,
    make_box,
    plain_message,
    ports,
    running_imap,
    selected_session,
    store,
    thread_items,
)
from tests.opcount import best_cpu_time, lines_executed


@pytest.fixture
def cfg(databases, tls_files):
    return imap_config(databases, tls_files, max_literal_size=4096, max_line_length=4096)


async def test_many_small_literals_cost_their_bytes(databases, tls_files, tls_ca, tmp_path):
    box = await make_box(databases, "tinyliterals@example.test", tmp_path)
    count = 20_000
    command = b"a ID (" + b" ".join([b"{0+}\r\n NIL"] * count) + b")\r\n"
    cfg = imap_config(databases, tls_files, max_literal_size=len(command))
    async with running_imap(cfg):
        raw = await RawClient.connect(ports(cfg)[1], tls_ca)
        await raw.login(box)
        tracemalloc.start()
        try:
            await raw.send(command)
            reply = await raw.until("a")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await raw.close()
    assert reply[-1].startswith(b"a BAD") and b"too many ID fields" in reply[-1], reply
    # the command held once or twice (its buffer, then its bytes), not an object per literal
    assert peak < 3 * len(command) + 256 * 1024, (peak, len(command))


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"b APPEND INBOX {5000+}\r\n" + b"x" * 5000, id="literal"),
        pytest.param(b"b NOOP " + b"x" * 5000, id="line"),
    ],
)
async def test_a_refused_command_is_read_to_its_end(
    databases, cfg, tls_ca, tmp_path, head, request
):
    """RFC 7888 4: a refused non-synchronizing literal still arrives, and so does the rest of
    its command; what follows in it (here a literal holding a command line) must never run."""
    box = await make_box(databases, f"smuggle-{request.node.callspec.id}@example.test", tmp_path)
    smuggled = b"c CREATE Smuggled\r\n"
    async with running_imap(cfg):
        raw = await RawClient.connect(ports(cfg)[1], tls_ca)
        await raw.login(box)
        await raw.send(head + b" {%d+}\r\n%b\r\n" % (len(smuggled), smuggled))
        reply = await raw.until("b")
        assert reply[-1].startswith(b"b BAD"), reply
        listed = await raw.command("l", 'LIST "" "*"')
        assert listed[-1].startswith(b"l OK") and b"Smuggled" not in b"".join(listed), listed
        assert not any(line.startswith(b"c ") or line.startswith(b"* BAD") for line in listed)
        await raw.close()


async def test_an_over_long_line_inside_a_command_is_answered_with_its_tag(
    databases, cfg, tls_ca, tmp_path
):
    """A SASL response or IDLE's DONE over the line limit: BAD tagged as the command (not as
    whatever the line began with), and the session goes on."""
    box = await make_box(databases, "longline@example.test", tmp_path)
    async with running_imap(cfg):
        raw = await RawClient.connect(ports(cfg)[1], tls_ca)
        await raw.send(b"au AUTHENTICATE PLAIN\r\n")
        assert (await raw.line()).startswith(b"+")
        await raw.send(b"QUFB" * 2000 + b"\r\n")
        assert (await raw.line()) == b"au BAD Command line too long\r\n"
        await raw.login(box)
        await raw.command("s", "SELECT INBOX")
        await raw.send(b"i IDLE\r\n")
        assert (await raw.line()).startswith(b"+")
        await raw.send(b"DONE" * 2000 + b"\r\n")
        reply = await raw.until("i")
        assert reply[-1] == b"i BAD Command line too long\r\n", reply
        assert (await raw.command("n", "NOOP"))[-1].startswith(b"n OK")
        await raw.close()


async def test_a_search_of_many_sets_costs_the_sets_not_sets_times_messages(
    databases, cfg, tls_ca, tmp_path, monkeypatch
):
    box = await make_box(databases, "searchsets@example.test", tmp_path)
    await store(databases, box, encrypt_for(box, plain_message(1)))
    handed: list[int] = []
    multirange = uidsets.multirange

    def counting(values):
        values = list(values)
        handed.append(len(values))
        return multirange(values)

    async with running_imap(cfg):
        raw = await selected_session(ports(cfg)[1], tls_ca, box)
        for _ in range(6):  # 64 messages
            assert (await raw.command("c", "COPY 1:* INBOX"))[-1].startswith(b"c OK")
        await raw.command("n", "NOOP")
        monkeypatch.setattr(uidsets, "multirange", counting)
        sets = [f"{n}:*" for n in range(1, 65)] + [f"UID {n}:*" for n in range(1, 65)]
        reply = await raw.command("q", "SEARCH " + " ".join(sets))
        assert reply[0] == b"* SEARCH 64\r\n" and reply[-1].startswith(b"q OK"), reply
        # the answers stay exact for sets of ranges, negations and repeats
        reply = await raw.command("q", "UID SEARCH 2:4,60:* NOT UID 3,62 RECENT 2:4,60:*")
        assert reply[0] == b"* SEARCH 2 4 60 61 63 64\r\n", reply
        reply = await raw.command("q", "SEARCH OR 1 UID 64:4294967295 NOT 2:63")
        assert reply[0] == b"* SEARCH 1 64\r\n", reply
        await raw.close()
    # one range per set: 128 sets handed as 128 ranges, not 128 x 64 UIDs
    assert sum(handed[:128]) == 128, handed[:10]


async def test_search_strings_are_bounded_in_all(databases, tls_files, tls_ca, tmp_path):
    """PostgreSQL's strpos costs up to the field's length times the string's when the string
    almost matches everywhere: `SUBJECT "baaa..."` (a 4 KB literal) against a Subject of
    `aaaa...` cost each message 4,000 reads of its text (1 MB against 2 MB: hours). The
    strings of one program are bounded in all (8,192 bytes), like the keys."""
    box = await make_box(databases, "searchtext@example.test", tmp_path)
    message = encrypt_for(box, plain_message(1)).replace(
        b"Subject: [...]", b"Subject: " + b"a" * 20_000, 1
    )
    await store(databases, box, message)
    needle = b"b" + b"a" * 4_000
    cfg = imap_config(databases, tls_files, max_literal_size=64 * 1024)
    async with running_imap(cfg):
        raw = await selected_session(ports(cfg)[1], tls_ca, box)
        literal = b"{%d+}\r\n%b" % (len(needle), needle)
        await raw.send(b"q SEARCH SUBJECT %b TEXT %b FROM %b\r\n" % (literal, literal, literal))
        reply = await raw.until("q")
        assert reply == [b"q NO [LIMIT] Search strings too long (at most 8192 bytes)\r\n"]
        half = "a" * 4096
        reply = await raw.command("h", f"SEARCH SUBJECT {half} FROM {half}")
        assert reply == [b"* SEARCH\r\n", b"h OK Search completed.\r\n"], reply
        reply = await raw.command("s", f"SEARCH SUBJECT {half} FROM {half}b")
        assert reply[-1].startswith(b"s NO [LIMIT]"), reply
        reply = await raw.command("t", f"SEARCH SUBJECT {half * 2}")
        assert reply == [b"* SEARCH 1\r\n", b"t OK Search completed.\r\n"], reply
        await raw.close()


async def test_keywords_are_bounded_per_message_and_per_mailbox(
    databases, tls_files, tls_ca, tmp_path
):
    """Keywords a client invents: more than a message's flags can hold, and a mailbox's list
    grown by adding and removing new ones, get NO [LIMIT] (not [UNAVAILABLE], which a client
    retries forever); what fits keeps working."""
    cfg = imap_config(databases, tls_files)
    box = await make_box(databases, "keywords@example.test", tmp_path)
    await store(databases, box, encrypt_for(box, plain_message(1)))
    async with running_imap(cfg):
        raw = await selected_session(ports(cfg)[1], tls_ca, box)
        # random, so PostgreSQL's compression does not shrink them to fit
        many = " ".join(secrets.token_hex(8) for _ in range(400))
        reply = await raw.command("k", f"STORE 1 +FLAGS ({many})")
        assert reply[-1].startswith(b"k NO [LIMIT]"), reply
        reply = await raw.command("k", f"STORE 1 +FLAGS (K{secrets.token_hex(2000)})")
        assert reply[-1].startswith(b"k NO [LIMIT]"), reply
        refused = None
        for cycle in range(8):
            batch = " ".join(f"c{cycle}k{n}" for n in range(200))
            reply = await raw.command("a", f"STORE 1 +FLAGS.SILENT ({batch})")
            if not reply[-1].startswith(b"a OK"):
                refused = cycle
                break
            reply = await raw.command("r", f"STORE 1 -FLAGS.SILENT ({batch})")
            assert reply[-1].startswith(b"r OK"), reply
        assert refused == 5 and reply[-1].startswith(b"a NO [LIMIT]"), (refused, reply)
        reply = await raw.command("k", "STORE 1 +FLAGS (c0k1)")  # a named one still fits
        assert reply[-1].startswith(b"k OK"), reply
        reply = await raw.command("s", "SELECT INBOX")
        flags = next(line for line in reply if line.startswith(b"* FLAGS"))
        assert flags.count(b" c") == 1000, len(flags)
        await raw.close()


async def test_repeated_flag_items_are_answered(databases, tls_files, tls_ca, tmp_path):
    """`FETCH 1 (UID UID ...)`: each item answered, as the general path does (PostgreSQL
    refused the one expression the flag-sync path made of thousands of them)."""
    cfg = imap_config(databases, tls_files)
    box = await make_box(databases, "repeated@example.test", tmp_path)
    await store(databases, box, encrypt_for(box, plain_message(1)))
    async with running_imap(cfg):
        raw = await selected_session(ports(cfg)[1], tls_ca, box)
        reply = await raw.command("f", "FETCH 1 (" + " ".join(["UID FLAGS"] * 2000) + ")")
        assert reply[-1].startswith(b"f OK"), reply[-1]
        assert reply[0].startswith(b"* 1 FETCH (UID 1 FLAGS (") and reply[0].count(b"UID 1") == 2000
        await raw.close()


async def test_multiappend_takes_a_bounded_number_of_messages(
    databases, tls_files, tls_ca, tmp_path
):
    cfg = imap_config(databases, tls_files, max_append_messages=3)
    box = await make_box(databases, "multiappend@example.test", tmp_path)

    def multiappend(count: int) -> bytes:
        bodies = [plain_message(n) for n in range(count)]
        return b"".join(b" {%d+}\r\n%b" % (len(body), body) for body in bodies)

    async with running_imap(cfg):
        raw = await selected_session(ports(cfg)[1], tls_ca, box)
        await raw.send(b"a APPEND INBOX" + multiappend(4) + b"\r\n")
        reply = await raw.until("a")
        assert reply[-1].startswith(b"a NO [LIMIT]") and b"3 messages" in reply[-1], reply
        await raw.send(b"b APPEND INBOX" + multiappend(3) + b"\r\n")
        reply = await raw.until("b")
        assert reply[-1].startswith(b"b OK [APPENDUID"), reply
        reply = await raw.command("t", "STATUS INBOX (MESSAGES)")
        assert reply[0] == b"* STATUS INBOX (MESSAGES 3)\r\n", reply
        await raw.close()


async def _compressed_session(port: int, tls_ca, box) -> tuple[RawClient, object, object]:
    raw = await RawClient.connect(port, tls_ca)
    await raw.login(box)
    assert (await raw.command("z", "COMPRESS DEFLATE"))[-1].startswith(b"z OK")
    return raw, zlib.compressobj(wbits=-15), zlib.decompressobj(wbits=-15)


async def _inflated_line(raw: RawClient, inflater) -> bytes:
    text = b""
    while b"\r\n" not in text:
        chunk = await asyncio.wait_for(raw.reader.read(65536), 10)
        assert chunk, ("closed", text)
        text += inflater.decompress(chunk)
    return text


async def test_deflate_input_is_inflated_as_the_session_reads_it(
    databases, tls_files, tls_ca, tmp_path
):
    """RFC 4978: 64 MB of line sent as 64 KB of DEFLATE (a decompression bomb) is inflated a
    buffer at a time while the session skips it, never held; the session answers and goes on."""
    cfg = imap_config(databases, tls_files)
    box = await make_box(databases, "deflatebomb@example.test", tmp_path)
    async with running_imap(cfg):
        raw, deflater, inflater = await _compressed_session(ports(cfg)[1], tls_ca, box)
        tracemalloc.start()
        try:
            raw.writer.write(deflater.compress(b"b NOOP "))
            for _ in range(1024):
                raw.writer.write(deflater.compress(b"x" * 65536))
                await raw.writer.drain()
            raw.writer.write(deflater.compress(b"\r\n") + deflater.flush(zlib.Z_SYNC_FLUSH))
            reply = await _inflated_line(raw, inflater)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert reply == b"b BAD Command line too long\r\n", reply
        raw.writer.write(deflater.compress(b"n NOOP\r\n") + deflater.flush(zlib.Z_SYNC_FLUSH))
        assert (await _inflated_line(raw, inflater)).startswith(b"n OK")
        await raw.close()
    assert peak < 4 * 1024 * 1024, peak


async def test_input_after_the_end_of_the_deflate_stream_is_not_kept(
    databases, tls_files, tls_ca, tmp_path
):
    """A client that ends its DEFLATE stream and sends on: what came before is answered, the
    rest is not read (zlib keeps bytes after the end in memory) and the connection ends."""
    cfg = imap_config(databases, tls_files)
    box = await make_box(databases, "deflateend@example.test", tmp_path)
    async with running_imap(cfg):
        raw, deflater, inflater = await _compressed_session(ports(cfg)[1], tls_ca, box)
        tracemalloc.start()
        try:
            raw.writer.write(deflater.compress(b"n NOOP\r\n") + deflater.flush(zlib.Z_FINISH))
            assert (await _inflated_line(raw, inflater)).startswith(b"n OK")
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                for _ in range(256):
                    raw.writer.write(secrets.token_bytes(65536))
                    await raw.writer.drain()
                while await asyncio.wait_for(raw.reader.read(65536), 10):
                    pass  # until the server closes the connection
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await raw.close()
    assert peak < 4 * 1024 * 1024, peak


async def test_a_thread_thousands_deep_is_threaded(databases, tls_files, tls_ca, tmp_path):
    """THREAD REFERENCES over a message whose References names 1,500 ancestors (a long
    discussion, or one crafted header): answered, not a recursion error."""
    cfg = imap_config(databases, tls_files)
    box = await make_box(databases, "deepthread@example.test", tmp_path)
    ancestors = " ".join(f"<a{n}@example.org>" for n in range(1500))
    for number, references in (
        (1, ""),
        (2, f"{ancestors} <m1@example.org>"),
        (3, "<m2@example.org>"),
    ):
        message = plain_message(number)
        if references:
            message = message.replace(b"Subject:", f"References: {references}\r\nSubject:".encode())
        await store(databases, box, encrypt_for(box, message))
    async with running_imap(cfg):
        raw = await selected_session(ports(cfg)[1], tls_ca, box)
        reply = await raw.command("t", "THREAD REFERENCES UTF-8 ALL")
        assert reply == [b"* THREAD (1 2 3)\r\n", b"t OK Thread completed.\r\n"], reply
        await raw.close()


def test_a_subject_of_many_blobs_is_stripped_without_backtracking():
    """RFC 5256 2.1 strips `[blob]`s and `Re:` leaders; a Subject of 40 blobs and no leader
    once backtracked through 2^40 ways to split its spaces (SORT SUBJECT, THREAD)."""
    assert sort.subject_info("[b] " * 40 + "x") == ("X", False)
    assert sort.subject_info("[b] " * 40 + "re [b]: x") == ("X", True)
    assert sort.subject_info("[b] " * 40) == ("[B]", False)


ENCODED_WORD_TOKENS = ["=?", "?=", "?", "=", "q", "Q", "b", "B", "utf-8", "latin-1", "nosuch",
                       "x", " ", "\t", "\n", "\r", "\u2028", "a", "YQ", "YWI=", "=41", "=C3=A9",
                       "=FF", "_", "\xe9", "?q?", "?b?", "=?utf-8?q?", "=?utf-8?b?"]  # fmt: skip


def _outcome(function, value):
    try:
        return "ok", function(value)
    except Exception as exc:  # which error is part of the result
        return "error", type(exc)


@settings(max_examples=5000, deadline=None)
@given(st.lists(st.sampled_from(ENCODED_WORD_TOKENS), max_size=16).map("".join))
def test_encoded_words_are_the_email_packages(value):
    """RFC 2047 words found, decoded and joined as the email package does it, errors too."""
    assert encodedwords.split(value) == email.header.ecre.split(value)
    assert _outcome(encodedwords.decode_header, value) == _outcome(
        email.header.decode_header, value
    )
    assert _outcome(encodedwords.decoded, value) == _outcome(
        lambda v: str(email.header.make_header(email.header.decode_header(v))), value
    )


# Subjects of many RFC 2047 words or word starts: the email package scanned the rest of the
# line from each `=?` never closed, and joined words with list.pop(0) and bytes +=.
ENCODED_WORD_SUBJECTS = {
    "unclosed words": lambda n: "=?x?q?a" * n,
    "words": lambda n: "=?utf-8?q?a?=" * n,
    "words and blanks": lambda n: "=?utf-8?b?YQ==?= " * n,
}


@pytest.mark.parametrize("shape", sorted(ENCODED_WORD_SUBJECTS))
def test_encoded_words_cost_their_length(shape):
    """Sixteen times the words, about sixteen times the work. The lost work was inside the
    regex engine and list and bytes methods, where no count of executed lines sees it, so
    CPU time of the same process is compared (the best of five, as a ratio: 256 where each
    word cost the line's length); the decoder's own steps are counted too."""
    build = ENCODED_WORD_SUBJECTS[shape]

    small, large = (best_cpu_time(sort.subject_info, build(n), 5) for n in (1_000, 16_000))
    assert large < 64 * small, (small, large)
    steps = [lines_executed(encodedwords.decoded, build(n)) for n in (250, 1_000)]
    assert steps[1] <= 4.4 * steps[0] + 100, steps


async def test_subjects_of_hostile_encoded_words_sort_and_thread(
    databases, tls_files, tls_ca, tmp_path
):
    """A Subject or display name of tens of thousands of `=?` (or one bad base64 word) in a
    stored message's clear header: SORT and THREAD answer (they took seconds per 100 KB and
    minutes per MB, or failed on the bad word, for everyone who listed the mailbox)."""
    cfg = imap_config(databases, tls_files)
    box = await make_box(databases, "encodedwords@example.test", tmp_path)
    crafted = {
        1: ("=?utf-8?b?a?= z", "=?utf-8?b?a?="),
        2: ("=?x?q?a" * 20_000, "=?x?q?a" * 20_000),
        3: ("Re: =?utf-8?q?=21?=", "=?utf-8?q?=21?="),  # "!" sorts first
    }
    for number, (subject, name) in crafted.items():
        message = encrypt_for(box, plain_message(number))
        message = message.replace(b"Subject: [...]", f"Subject: {subject}".encode(), 1)
        message = message.replace(f"Sender {number}".encode(), name.encode(), 1)
        await store(databases, box, message)
    async with running_imap(cfg):
        raw = await selected_session(ports(cfg)[1], tls_ca, box)
        assert await raw.command("s", "SORT (SUBJECT) UTF-8 ALL") == [
            b"* SORT 3 1 2\r\n",
            b"s OK Sort completed.\r\n",
        ]
        assert await raw.command("d", "SORT (DISPLAYFROM) UTF-8 ALL") == [
            b"* SORT 3 1 2\r\n",
            b"d OK Sort completed.\r\n",
        ]
        assert await raw.command("t", "THREAD ORDEREDSUBJECT UTF-8 ALL") == [
            b"* THREAD (1)(2)(3)\r\n",
            b"t OK Thread completed.\r\n",
        ]
        await raw.close()


def _deep_thread(n: int) -> list[str]:
    """A thread n messages deep: each replies to the one before."""
    return [f"Message-ID: <m{i}@x>\r\nIn-Reply-To: <m{i - 1}@x>" for i in range(n)]


# Mailboxes of n crafted messages (and a deep tree) for THREAD REFERENCES; each header gets a
# Subject and a Date. Walking up from a reference for every loop check, or splicing a chain
# of dummies' children level by level, made each of them cost n x n.
CRAFTED_THREADS = {
    "References naming subtrees' roots below a deep thread": lambda n: (
        _deep_thread(n)
        + [
            f"Message-ID: <c{i}@x>\r\nReferences: <r{i}@x> <x{i}@x> <m{n - 1}@x> <r{i}@x>"
            for i in range(n)
        ]
    ),
    "subtrees' roots arriving as replies in a deep thread": lambda n: (
        _deep_thread(n)
        + [
            header
            for i in range(n)
            for header in (
                f"Message-ID: <x{i}@x>\r\nReferences: <r{i}@x>",
                f"Message-ID: <r{i}@x>\r\nReferences: <m{n - 1}@x>",
            )
        ]
    ),
    "replies below a deep chain of unknown ids": lambda n: [
        "Message-ID: <m@x>\r\nReferences: " + " ".join(f"<d{i}@x>" for i in range(n)),
        *(f"Message-ID: <c{i}@x>\r\nIn-Reply-To: <d{n - 1}@x>" for i in range(n)),
    ],
    "one subject of many [blobs] met again by every thread": lambda n: [
        "Message-ID: <first@x>\r\nSubject: " + "[b] " * n + "x",
        *(f"Message-ID: <{i}@x>\r\nSubject: x" for i in range(n)),
    ],
}


@pytest.mark.parametrize("shape", sorted(CRAFTED_THREADS))
def test_thread_references_costs_n_log_n_on_crafted_mailboxes(shape):
    """Loop checks answered by a link-cut forest (O(log n) each), dummies pruned in one walk
    and each subject read once: four times the crafted mailbox costs about four times the
    steps (n log n), where it cost sixteen times (n x n). Steps are executed lines of
    encimap, not time."""

    def items(n: int) -> list[thread._Message]:
        headers = [
            h if "Subject:" in h else f"{h}\r\nSubject: s{number % 7}"
            for number, h in enumerate(CRAFTED_THREADS[shape](n))
        ]
        return thread_items(
            [f"{h}\r\nDate: 1 Jan 2024 10:00:00 +0000\r\n\r\n".encode() for h in headers]
        )

    counts = (
        lines_executed(thread.references, items(200)),
        lines_executed(thread.references, items(800)),
    )
    assert counts[1] <= 5 * counts[0], counts


async def test_list_costs_each_name_once(databases, tls_files, tls_ca, tmp_path):
    """LIST over a folder tree: whether a name has children is looked up, not found by
    comparing it with every other name (1,000 names 16 levels deep made that 15,000 x 1,000
    comparisons per LIST); a client's list of patterns is bounded."""
    cfg = imap_config(databases, tls_files)
    box = await make_box(databases, "listcost@example.test", tmp_path)
    compared = 0

    def profile(frame, event, arg):
        nonlocal compared
        if event == "c_call" and getattr(arg, "__name__", "") == "startswith":
            compared += frame.f_code.co_filename.endswith("commands/mailbox.py")

    async with running_imap(cfg):
        raw = await RawClient.connect(ports(cfg)[1], tls_ca)
        await raw.login(box)
        for number in range(60):
            assert (await raw.command("c", f"CREATE t{number}/a/b"))[-1].startswith(b"c OK")
        sys.setprofile(profile)
        try:
            listed = await raw.command("l", 'LIST "" "*"')
        finally:
            sys.setprofile(None)
        assert compared < 60, compared
        assert listed[-1].startswith(b"l OK") and len(listed) == 1 + 5 + 3 * 60, len(listed)
        assert b'* LIST (\\Noselect \\HasChildren) "/" t7/a\r\n' in listed, listed[:5]
        assert b'* LIST (\\HasNoChildren) "/" t7/a/b\r\n' in listed
        patterns = " ".join(f'"t{n}/%"' for n in range(101))
        reply = await raw.command("p", f'LIST "" ({patterns})')
        assert reply[-1].startswith(b"p NO [LIMIT]"), reply[-1]
        reply = await raw.command("p", 'LIST "" (' + " ".join(['"t1/%"'] * 500) + ")")
        assert reply == [b'* LIST (\\Noselect \\HasChildren) "/" t1/a\r\n', reply[-1]], reply
        await raw.close()


async def test_subscriptions_are_bounded_like_folders(databases, tls_files, tls_ca, tmp_path):
    """A subscription outlives its folder (RFC 3501 6.3.6): CREATE, SUBSCRIBE, DELETE over
    and over added names without end; there are at most `max_mailboxes` of them."""
    cfg = imap_config(databases, tls_files, max_mailboxes=12)
    box = await make_box(databases, "subscriptions@example.test", tmp_path)
    async with running_imap(cfg):
        raw = await RawClient.connect(ports(cfg)[1], tls_ca)
        await raw.login(box)
        refused = None
        for number in range(20):
            assert (await raw.command("c", f"CREATE gone{number}"))[-1].startswith(b"c OK")
            reply = await raw.command("s", f"SUBSCRIBE gone{number}")
            assert (await raw.command("d", f"DELETE gone{number}"))[-1].startswith(b"d OK")
            if not reply[-1].startswith(b"s OK"):
                refused = reply[-1]
                break
        assert refused is not None and refused.startswith(b"s NO [LIMIT]"), refused
        subscribed = [
            line for line in await raw.command("l", 'LSUB "" "*"') if line.startswith(b"* LSUB")
        ]
        assert len(subscribed) == 12, subscribed
        assert (await raw.command("u", "UNSUBSCRIBE gone0"))[-1].startswith(b"u OK")
        assert (await raw.command("s", "SUBSCRIBE INBOX"))[-1].startswith(b"s OK")  # had it
        assert (await raw.command("c", "CREATE again"))[-1].startswith(b"c OK")
        assert (await raw.command("s", "SUBSCRIBE again"))[-1].startswith(b"s OK")
        await raw.close()


async def test_sort_criteria_named_again_cost_nothing(
    databases, tls_files, tls_ca, tmp_path, monkeypatch
):
    """`SORT (SUBJECT REVERSE SUBJECT ...)`: a criterion named again cannot change the order,
    so a key holds one value per criterion, not one per word of a 64 KB list per message."""
    cfg = imap_config(databases, tls_files)
    box = await make_box(databases, "sortkeys@example.test", tmp_path)
    for number in (3, 1, 2):
        await store(databases, box, encrypt_for(box, plain_message(number)))
    asked = 0
    key = sort.MessageFields.key

    def counting(self, criterion):
        nonlocal asked
        asked += 1
        return key(self, criterion)

    monkeypatch.setattr(sort.MessageFields, "key", counting)
    async with running_imap(cfg):
        raw = await selected_session(ports(cfg)[1], tls_ca, box)
        criteria = " ".join(["SUBJECT REVERSE SUBJECT SIZE"] * 1000)
        reply = await raw.command("o", f"SORT (REVERSE FROM {criteria}) UTF-8 ALL")
        assert reply == [b"* SORT 1 3 2\r\n", b"o OK Sort completed.\r\n"], reply
        await raw.close()
    assert asked <= 3 * 3, asked  # FROM, SUBJECT, SIZE for each of the three messages


async def test_qresync_and_changedsince_cost_the_changes_not_changes_times_ranges(
    databases, tls_files, tls_ca, tmp_path
):
    """A UID set of many ranges (`1,3,5,...`) against many changed or expunged messages: each
    message is looked up among the ranges, the expunged ranges met with the wanted ones in
    one pass (it was a test of every range for every message)."""
    cfg = imap_config(databases, tls_files)
    box = await make_box(databases, "qresync@example.test", tmp_path)
    await store(databases, box, encrypt_for(box, plain_message(1)))
    stepped = 0

    def trace(frame, event, arg):
        nonlocal stepped
        if not frame.f_code.co_filename.endswith("commands/condstore.py"):
            return None
        stepped += event == "line"
        return trace

    async with running_imap(cfg):
        raw = await selected_session(ports(cfg)[1], tls_ca, box)
        for _ in range(7):  # 128 messages
            assert (await raw.command("c", "COPY 1:* INBOX"))[-1].startswith(b"c OK")
        await raw.command("e", "ENABLE QRESYNC")
        reply = await raw.command("s", "SELECT INBOX")
        uidvalidity = next(line for line in reply if b"UIDVALIDITY" in line).split()[3][:-1]
        evens = ",".join(str(n) for n in range(2, 129, 2))
        await raw.command("d", f"UID STORE {evens} +FLAGS.SILENT (\\Deleted)")
        await raw.command("x", "EXPUNGE")
        odds = ",".join(str(n) for n in range(1, 129, 2))
        sys.settrace(trace)
        try:
            fetched = await raw.command("f", f"UID FETCH {odds} (FLAGS) (CHANGEDSINCE 1)")
            reply = await raw.command(
                "s", f"SELECT INBOX (QRESYNC ({uidvalidity.decode()} 1 {odds}))"
            )
        finally:
            sys.settrace(None)
        assert fetched[-1].startswith(b"f OK") and len(fetched) == 65, fetched[-1]
        vanished = [line for line in reply if line.startswith(b"* VANISHED")]
        assert vanished == [], vanished  # none of the odd UIDs went
        reply = await raw.command("s", f"SELECT INBOX (QRESYNC ({uidvalidity.decode()} 1 1:128))")
        vanished = [line for line in reply if line.startswith(b"* VANISHED")]
        assert vanished == [b"* VANISHED (EARLIER) " + evens.encode() + b"\r\n"], vanished
        await raw.close()
    # 64 changed messages against 64 ranges, twice: a few lines each, not 64 x 64
    assert stepped < 40 * 128, stepped


class _CountingArray(array):
    deletions = 0

    def __delitem__(self, index):
        _CountingArray.deletions += 1
        super().__delitem__(index)


async def test_an_expunge_renumbers_the_view_once(
    databases, tls_files, tls_ca, tmp_path, monkeypatch
):
    """Expunging many messages rebuilds the session's sequence map once (it shifted the rest
    of the map once per message: quadratic), and the numbers reported stay RFC 3501's."""
    cfg = imap_config(databases, tls_files)
    box = await make_box(databases, "expunges@example.test", tmp_path)
    await store(databases, box, encrypt_for(box, plain_message(1)))
    load = Selected._load

    def counting_load(self, summary):
        load(self, summary)
        self.uids = _CountingArray("I", self.uids)

    monkeypatch.setattr(Selected, "_load", counting_load)
    async with running_imap(cfg):
        raw = await selected_session(ports(cfg)[1], tls_ca, box)
        for _ in range(7):  # 128 messages
            assert (await raw.command("c", "COPY 1:* INBOX"))[-1].startswith(b"c OK")
        await raw.command("s", "SELECT INBOX")
        evens = ",".join(str(n) for n in range(2, 129, 2))
        await raw.command("d", f"UID STORE {evens} +FLAGS.SILENT (\\Deleted)")
        reply = await raw.command("x", "EXPUNGE")
        # UID 2k is at 2k, less the k-1 expunged before it
        assert reply == [b"* %d EXPUNGE\r\n" % (k + 1) for k in range(1, 65)] + [reply[-1]]
        reply = await raw.command("f", "FETCH 1:* (UID)")
        assert reply[:-1] == [b"* %d FETCH (UID %d)\r\n" % (n, 2 * n - 1) for n in range(1, 65)]
        await raw.close()
    assert _CountingArray.deletions == 0


async def test_an_idling_client_that_never_reads_holds_bounded_output(
    databases, tls_files, tls_ca, tmp_path, monkeypatch
):
    """A client that starts IDLE and never reads again while another session changes flags
    over and over (7 MB of FETCH responses): what the server holds for it (queued plus in the
    transport) stays about two flush sizes, whatever the kernel buffers took."""
    cfg = imap_config(databases, tls_files)
    box = await make_box(databases, "slowreader@example.test", tmp_path)
    await store(databases, box, encrypt_for(box, plain_message(1)))
    held: list[int] = []
    send = session_module.Session.send

    def measuring(self, data):
        send(self, data)
        held.append(self._buffered + self.writer.transport.get_write_buffer_size())

    monkeypatch.setattr(session_module.Session, "send", measuring)
    async with running_imap(cfg):
        idler = await selected_session(ports(cfg)[1], tls_ca, box)
        writer = await selected_session(ports(cfg)[1], tls_ca, box)
        for _ in range(8):  # 256 messages
            await writer.command("c", "COPY 1:* INBOX")
        await idler.command("n", "NOOP")
        await idler.send(b"i IDLE\r\n")
        assert (await idler.line()).startswith(b"+")
        for n in range(700):
            change = "+" if n % 2 == 0 else "-"
            reply = await writer.command("s", f"STORE 1:* {change}FLAGS.SILENT (\\Flagged)")
            assert reply[-1].startswith(b"s OK"), reply
        await writer.close()
        await idler.close()
    assert len(held) > 100_000  # the responses were produced ...
    assert max(held) < 2 * session_module._FLUSH_AT + 64 * 1024, max(held)  # ... not kept
