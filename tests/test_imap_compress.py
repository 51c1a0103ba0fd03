"""COMPRESS=DEFLATE (RFC 4978) with a client that deflates its commands and inflates the
replies (zlib, raw DEFLATE): commands, literals in both directions and exact message bytes."""

from __future__ import annotations

import asyncio
import contextlib
import zlib

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


class _DeflatingWriter:
    def __init__(self, raw: asyncio.StreamWriter) -> None:
        self.raw = raw
        self.compressor = zlib.compressobj(wbits=-15)

    def write(self, data: bytes) -> None:
        self.raw.write(self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH))

    async def drain(self) -> None:
        await self.raw.drain()

    def close(self) -> None:
        self.raw.close()

    async def wait_closed(self) -> None:
        await self.raw.wait_closed()


async def _inflating(source: asyncio.StreamReader, target: asyncio.StreamReader) -> None:
    inflater = zlib.decompressobj(wbits=-15)
    while data := await source.read(65536):
        target.feed_data(inflater.decompress(data))
    target.feed_eof()


async def test_compress_deflate(databases, tls_files, tls_ca, tmp_path):
    box = await make_box(databases, "compress@example.test", tmp_path)
    stored = encrypt_for(box, plain_message(1, size=300_000))
    await store(databases, box, stored)
    cfg = imap_config(databases, tls_files)
    async with running_imap(cfg):
        client = await RawClient.connect(ports(cfg)[1], tls_ca)
        assert (await client.command("c", "COMPRESS DEFLATE"))[-1].startswith(b"c BAD")
        await client.login(box)
        capability = await client.command("a", "CAPABILITY")
        assert b" COMPRESS=DEFLATE" in capability[0], capability
        assert await client.command("z", "COMPRESS DEFLATE") == [b"z OK DEFLATE active\r\n"]
        inflated = asyncio.StreamReader(limit=1 << 20)
        pump = asyncio.create_task(_inflating(client.reader, inflated))
        deflated = RawClient(inflated, _DeflatingWriter(client.writer))  # type: ignore[arg-type]
        try:
            reply = await deflated.command("z", "COMPRESS DEFLATE")
            assert reply[-1].startswith(b"z NO [COMPRESSIONACTIVE]"), reply
            await deflated.command("s", "SELECT INBOX")
            reply = await deflated.command("f", "FETCH 1 BODY.PEEK[]")
            assert reply[1] == stored and reply[-1].startswith(b"f OK"), reply[-1]
            # a literal far larger than one read, sent deflated
            big = encrypt_for(box, plain_message(2, size=200_000))
            await deflated.send(f"p APPEND INBOX {{{len(big)}+}}\r\n".encode() + big + b"\r\n")
            reply = await deflated.until("p")
            assert reply[-1].startswith(b"p OK [APPENDUID"), reply
            reply = await deflated.command("g", "FETCH 2 BODY.PEEK[]")
            assert reply[-2:-1] != [] and big in reply, reply[-1]
            reply = await deflated.command("l", "LOGOUT")
            assert reply[-1].startswith(b"l OK"), reply
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            await client.close()
