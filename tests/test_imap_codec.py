"""The pure parts of the IMAP server: parser, serializer, message cache, MIME part offsets."""

from __future__ import annotations

import pytest

from encimap import mimeinfo
from encimap.imap import parser, wire
from encimap.imap.cache import MessageCache
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
