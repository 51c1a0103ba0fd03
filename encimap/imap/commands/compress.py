"""COMPRESS=DEFLATE (RFC 4978): after `COMPRESS DEFLATE` both directions are raw DEFLATE
streams (RFC 1951). Responses are flushed with Z_SYNC_FLUSH at every write, so the client can
read each one at once; the session writes in large batches, so that costs little."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

from encimap.imap.commands import AUTHENTICATED, command
from encimap.imap.parser import Reader
from encimap.imap.session import AlreadyReplied, Session, bad, no

_READ = 64 * 1024


@command("COMPRESS", states=AUTHENTICATED)
async def compress(session: Session, tag: str, reader: Reader) -> str:
    reader.sp()
    mechanism = reader.atom().upper()
    reader.end()
    if mechanism != "DEFLATE":
        raise bad(f"Unknown compression mechanism {mechanism[:20]}")
    if isinstance(session.writer, DeflateWriter):
        raise no("[COMPRESSIONACTIVE] DEFLATE is already active")
    session.send(f"{tag} OK DEFLATE active\r\n".encode())
    await session.flush()
    raw_reader, raw_writer = session.reader, session.writer
    inflated = asyncio.StreamReader(limit=raw_reader._limit)
    session.reader = inflated
    session.writer = DeflateWriter(raw_writer)  # type: ignore[assignment]
    pump = asyncio.create_task(_inflate(raw_reader, inflated), name=f"inflate-{session.id}")
    session.writer.pump = pump  # type: ignore[attr-defined]
    raise AlreadyReplied


class _Flow(asyncio.BaseTransport):
    """Stands in as the inflated reader's transport: the reader pauses it when the session
    has a lot of unread input and resumes it once the session has read it."""

    def __init__(self) -> None:
        super().__init__()
        self.flowing = asyncio.Event()
        self.flowing.set()

    def pause_reading(self) -> None:
        self.flowing.clear()

    def resume_reading(self) -> None:
        self.flowing.set()


async def _inflate(source: asyncio.StreamReader, target: asyncio.StreamReader) -> None:
    """Feed what the client sends, inflated, to the session's reader. Inflation is bounded (a
    small compressed input cannot fill memory): at most a read's worth at a time, and none
    while the session has more than two reader buffers' worth of input it has not read. The
    end of the client's DEFLATE stream is the end of its input."""
    inflater = zlib.decompressobj(wbits=-15)
    flow = _Flow()
    target.set_transport(flow)  # type: ignore[arg-type]
    try:
        while True:
            data = await source.read(_READ)
            if not data:
                break
            while data:
                await flow.flowing.wait()
                target.feed_data(inflater.decompress(data, _READ))
                data = inflater.unconsumed_tail
            if inflater.eof:
                # The client ended its stream (RFC 4978 has no way back to plain text): what
                # follows is not read (zlib would keep every byte of it in unused_data), and
                # the session ends once it has answered what came before.
                break
    except (zlib.error, ConnectionError, OSError) as exc:
        target.set_exception(ConnectionError(f"bad DEFLATE stream: {exc}"))
        return
    target.feed_eof()


class DeflateWriter:
    """The session's writer once COMPRESS is active: DEFLATE over the connection's writer."""

    def __init__(self, raw: asyncio.StreamWriter) -> None:
        self.raw = raw
        self.compressor = zlib.compressobj(wbits=-15)
        self.pump: asyncio.Task[None] | None = None

    def write(self, data: bytes) -> None:
        self.raw.write(self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH))

    async def drain(self) -> None:
        await self.raw.drain()

    def close(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
        self.raw.close()

    async def wait_closed(self) -> None:
        await self.raw.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)

    @property
    def transport(self) -> asyncio.BaseTransport:
        return self.raw.transport
