"""The pure parts of the IMAP server: parser, serializer, message cache, MIME part offsets."""

from __future__ import annotations

import asyncio

import pytest

from encimap import mimeinfo
from encimap.imap import parser, shared, wire
from encimap.imap.cache import MessageCache
from encimap.imap.commands import fetch
from encimap.store import search as keys
from tests.imap_corpus import NESTED


def test_literals_and_sequence_sets():
    assert parser.literal_announcement(b"a LOGIN {5}") == (5, True)
    assert parser.literal_announcement(b"a LOGIN {5+}") == (5, False)
    assert parser.literal_announcement(b"a LOGIN x") is None
    reader = parser.Reader(b'{3}\r\nabc "q\\"uoted" atom')
    assert reader.astring() == b"abc"
    reader.sp()
    assert reader.astring() == b'q"uoted'
    reader.sp()
    assert reader.astring() == b"atom"
    sequence = parser.Reader(b"1:3,7,9:*").sequence_set()
    assert sequence.resolve(12) == [(1, 3), (7, 7), (9, 12)]
    for bad in (b"0", b"1:0", b"x", b"1,", b"4294967296", b"1:2)"):
        reader = parser.Reader(bad)
        with pytest.raises(parser.ParseError):
            reader.sequence_set()
            reader.end()


def test_fetch_items_and_search_programs():
    items = parser.parse_fetch_items(
        parser.Reader(b"(UID BODY.PEEK[1.2.MIME] BODY[HEADER.FIELDS (From To)]<0.100>)")
    )
    assert [item.label() for item in items] == [
        "UID",
        "BODY[1.2.MIME]",
        "BODY[HEADER.FIELDS (FROM TO)]<0>",
    ]
    assert items[1].peek and not items[2].peek and items[2].partial == (0, 100)
    program = parser.parse_search(parser.Reader(b"CHARSET UTF-8 OR FROM a NOT SEEN UID 2:4"))
    assert program.key == keys.And(
        (
            keys.Or(keys.Header("from", "a"), keys.Not(keys.Flag("\\Seen"))),
            parser.SetKey(parser.SequenceSet(((2, 4),)), uid=True),
        )
    )


def test_binary_items_literal8_and_url_sections():
    items = parser.parse_fetch_items(
        parser.Reader(b"(BINARY.PEEK[1]<0.7> BINARY[2.1] BINARY.SIZE[] BINARY.SIZE[3])")
    )
    assert [item.label() for item in items] == [
        "BINARY[1]<0>",
        "BINARY[2.1]",
        "BINARY.SIZE[]",
        "BINARY.SIZE[3]",
    ]
    assert items[0].peek and not items[1].peek and items[0].partial == (0, 7)
    for bad in (b"BINARY[1.MIME]", b"BINARY[TEXT]", b"BINARY.SIZE[1]<0.1>", b"BINARY"):
        reader = parser.Reader(b"(UID " + bad + b")")
        with pytest.raises(parser.ParseError):
            parser.parse_fetch_items(reader)
    assert parser.announces_literal8(b"a APPEND x ~{5}")
    assert parser.announces_literal8(b"a APPEND x ~{5+}")
    assert not parser.announces_literal8(b"a APPEND x {5}")
    assert parser.literal_announcement(b"a APPEND x ~{5+}") == (5, False)
    assert parser.Reader(b"~{2}\r\n\x00\x01").literal(binary=True) == b"\x00\x01"
    with pytest.raises(parser.ParseError):  # a literal8 only where binary data may be
        parser.Reader(b"~{2}\r\n\x00\x01").string()
    assert parser.parse_section(b"HEADER.FIELDS (From)") == parser.Section(
        (), "HEADER.FIELDS", ("FROM",)
    )
    assert parser.parse_section(b"1.2") == parser.Section((1, 2))
    for bad in (b"0", b"NOSUCH", b"HEADER]x"):
        with pytest.raises(parser.ParseError):
            parser.parse_section(bad)


def test_wire_forms():
    assert wire.ordered_sequence_set([7, 8, 2]) == "7:8,2"
    assert wire.astring("INBOX") == "INBOX"
    assert wire.astring("My Folder") == '"My Folder"'
    assert wire.astring("Grüße") == "{7}\r\nGrüße"
    assert wire.astring("NIL") == '"NIL"'


def test_cache_is_bounded_and_never_keeps_flags():
    cache = MessageCache(max_bytes=10_000)
    for uid in range(1, 20):
        cache.put(1, {"uid": uid, "flags": ["\\Seen"], "body_encrypted": b"x" * 500})
    assert cache.get(1, 1, {"body_encrypted"}) is None  # evicted
    entry = cache.get(1, 19, {"body_encrypted"})
    assert entry is not None and "flags" not in entry
    assert cache.get(1, 19, {"flags"}) is None
    assert cache.get(2, 19, {"body_encrypted"}) is None


def test_part_offsets_slice_the_stored_bytes():
    info = mimeinfo.describe(NESTED)
    parts = {part.section: part for part in info.parts}
    assert set(parts) >= {"", "1", "1.1", "1.2", "2", "3", "3.1"}
    assert NESTED[parts["1.1"].body_start : parts["1.1"].end] == b"plain body"
    assert NESTED[parts["2"].header_start : parts["2"].body_start].startswith(
        b"Content-Type: application/pdf"
    )
    assert NESTED[parts["3"].body_start : parts["3"].end].startswith(b"From: inner@example.org")
    assert NESTED[parts["3.1"].body_start : parts["3.1"].end] == b"inner body"


@pytest.mark.parametrize(
    ("line", "may_write"),
    [
        (b"a FETCH 1 BODY.PEEK[]", False),
        (b"a UID FETCH 1:* (UID FLAGS)", False),
        (b"a FETCH 1 (RFC822.SIZE RFC822.HEADER binary.peek[1] BINARY.SIZE[1])", False),
        (b"a FETCH 1 FULL", False),
        (b"a FETCH 1 BODY[]", True),
        (b"a FETCH 1 (FLAGS BODY.PEEK[HEADER] body[text])", True),
        (b"a FETCH 1 RFC822", True),
        (b"a FETCH 1 rfc822.text", True),
        (b"a UID FETCH 1 BINARY[1]", True),
    ],
)
def test_a_fetch_that_may_set_seen_counts_as_a_write(line, may_write):
    """Only a FETCH that cannot set \\Seen may gather other sessions' changes while it runs
    (Session.after_command): one that may, and reads too early, reports stale flags."""
    assert fetch.may_set_seen(line) is may_write


async def test_a_read_from_before_the_process_own_write_is_not_shared_after_it():
    """After a session's own change (`shared.written`), its report must not use a read that
    began, or was answered, before it: the change's NOTIFY may not have counted yet."""
    asked: list[int] = []

    def query(answer: int):
        async def run() -> int:
            asked.append(answer)
            await asyncio.sleep(0)
            return answer

        return run

    shared.selected(-7)
    try:
        assert await shared.read(-7, "flags", query(1)) == 1
        assert await shared.read(-7, "flags", query(2)) == 1  # kept until the next event
        shared.written(-7)
        assert await shared.read(-7, "flags", query(3)) == 3
        under_way = asyncio.ensure_future(shared.read(-7, "new", query(4)))
        await asyncio.sleep(0)  # the first read has begun
        shared.written(-7)
        assert await shared.read(-7, "new", query(5)) == 5
        assert await under_way == 4
        assert asked == [1, 3, 4, 5]
    finally:
        shared.unselected(-7)
