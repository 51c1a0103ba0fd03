"""DATA read in whole buffers gives what aiosmtpd's own line-by-line smtp_DATA gives: the same
replies, the same stored bytes, the same rest of the stream for the next command."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encimap.smtpdata import FastDataReading


class Handler:
    def __init__(self) -> None:
        self.stored: list[bytes] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.stored.append(envelope.original_content)
        return "250 stored"


class Recording(SMTP):
    """An SMTP protocol without a socket: replies are recorded, input is fed by the test."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replies: list[str] = []

    async def push(self, status) -> None:
        self.replies.append(status.decode() if isinstance(status, bytes) else status)


class Fast(FastDataReading, Recording):
    pass


async def run_data(cls: type[Recording], chunks: list[bytes], limit: int | None):
    handler = Handler()
    server = cls(handler, data_size_limit=limit, loop=asyncio.get_running_loop())
    server.transport = object()  # aiosmtpd's DATA loop runs while there is a transport
    server._reader = server._stream_reader  # what connection_made would hand over
    server.session = server._create_session()
    server.session.host_name = "client.test"
    server.envelope = server._create_envelope()
    server.envelope.rcpt_tos.append("rcpt@vault.test")
    task = asyncio.ensure_future(server.smtp_DATA(""))
    for chunk in chunks:
        server._reader.feed_data(chunk)
        await asyncio.sleep(0)
    await asyncio.wait_for(task, 5)
    rest = bytes(server._reader._buffer)
    return server.replies, handler.stored, rest


def line_strategy():
    lengths = st.one_of(
        st.integers(0, 80), st.sampled_from([997, 998, 999, 1000, 1001, 1002, 1003, 2100])
    )
    ends = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"])
    starts = st.sampled_from([b"", b"", b".", b"..", b"\r\n"])
    return st.builds(
        lambda start, length, fill, end: start + fill * length + end,
        starts,
        lengths,
        st.sampled_from([b"x", b".", b"\r", b"\n", b"\xe9"]),
        ends,
    )


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(line_strategy(), max_size=12),
    st.sampled_from([None, 0, 50, 1000, 2000, 5000]),
    st.lists(st.integers(0, 6000), max_size=40),
    st.sampled_from([b"", b"NOOP\r\n", b"RSET\r\nQUIT\r\n"]),
)
async def test_same_outcome_as_aiosmtpd(lines, limit, cuts, after):
    data = b"".join(lines) + b".\r\n" if not lines or lines[-1].endswith(b"\r\n") else b""
    data = data or b"".join(lines) + b"\r\n.\r\n"
    chunks = split(data + after, cuts)
    expected = await run_data(Recording, chunks, limit)
    assert await run_data(Fast, chunks, limit) == expected


async def test_dot_unstuffing_and_the_rest_of_the_stream():
    data = b"..a\r\n.b\r\nc.\r\n\r\n.\r\nNOOP\r\n"
    replies, stored, rest = await run_data(Fast, [data], None)
    assert stored == [b".a\r\nb\r\nc.\r\n\r\n"]
    assert replies[-1] == "250 stored" and rest == b"NOOP\r\n"
    assert (replies, stored, rest) == await run_data(Recording, [data], None)


async def test_too_much_data_is_not_kept():
    data = b"".join(b"%04d\r\n" % n for n in range(5000)) + b".\r\n"
    replies, stored, _ = await run_data(
        Fast, [data[i : i + 700] for i in range(0, len(data), 700)], 1000
    )
    assert replies[-1].startswith("552") and stored == []


@pytest.mark.parametrize(
    ("line", "cut", "reply"),
    [
        # 1001 characters and CRLF over the size limit: the size is checked first (552), even
        # when the chunk ends between CR and LF.
        (b"x" * 1001 + b"\r\n", 1002, "552"),
        (b"x" * 1001 + b"\r\n", 1001, "552"),
        # 1002 characters: aiosmtpd's reader overruns before counting the size (500).
        (b"x" * 1002 + b"\r\n", 1002, "500"),
        (b"x" * 1002 + b"\r\n", 1003, "500"),
    ],
)
async def test_which_error_wins_at_the_size_limit(line, cut, reply):
    data = line + b".\r\n"
    chunks = [data[:cut], data[cut:]]
    expected = await run_data(Recording, chunks, 1000)
    assert expected[0][-1].startswith(reply)
    assert await run_data(Fast, chunks, 1000) == expected


async def test_a_last_line_sent_a_byte_at_a_time_is_checked_once(monkeypatch):
    """Over the size limit, a byte of an unfinished last line decides nothing yet (the line
    may still grow too long): the complete lines before it are checked once, not once per
    byte that arrives (which made each byte cost the whole buffer: 37 ms at 25 MB)."""
    checked: list[int] = []
    check = Fast._check

    def counted(self, body, *args):
        checked.append(len(body))
        return check(self, body, *args)

    monkeypatch.setattr(Fast, "_check", counted)
    lines = b"x" * 98 + b"\r\n"
    chunks = [lines * 1000, *[b"y"] * 900, b"\r\n.\r\n"]  # 100,000 bytes of lines, then 900
    replies, stored, rest = await run_data(Fast, chunks, 100_000)
    assert replies[-1].startswith("552") and stored == [] and rest == b""
    assert len(checked) > 900  # one check per byte that arrived, of the new lines only,
    assert sum(checked) <= 2 * (100_000 + 900 + 5), sum(checked)  # and the end's whole body
    assert (replies, stored, rest) == await run_data(Recording, chunks, 100_000)
