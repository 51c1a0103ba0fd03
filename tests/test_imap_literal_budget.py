"""The literal bytes of all commands being read or run in one IMAP process are bounded
(`imap.max_literal_bytes_in_flight`), against the real service over real sockets: a literal
that would pass the budget is refused before the client sends it (no "+"), the session stays
in step, and a command's reservation ends when it is answered or its client is gone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tests.imap_support import (
    RawClient,
    imap_config,
    make_box,
    plain_message,
    ports,
    running_imap,
    selected_session,
)

BUDGET = 200_000
BIG = plain_message(1, size=150_000)  # A's message: fits alone
SMALL = plain_message(2, size=100_000)  # B's message: fits alone, not beside A's
BUSY = b"NO [UNAVAILABLE] Server busy, try again later\r\n"


@contextlib.asynccontextmanager
async def a_holds_the_budget(
    databases, tls_files, tls_ca, tmp_path, name: str
) -> AsyncIterator[tuple[RawClient, RawClient]]:
    """Two sessions of one user on a server whose budget takes BIG or SMALL, not both; the
    first (A) has announced BIG and been told "+", the second (B) is idle."""
    assert len(BIG) <= BUDGET and len(SMALL) <= BUDGET < len(BIG) + len(SMALL)
    box = await make_box(databases, f"{name}@example.test", tmp_path)
    cfg = imap_config(
        databases, tls_files, max_literal_size=BUDGET, max_literal_bytes_in_flight=BUDGET
    )
    async with running_imap(cfg):
        a = await selected_session(ports(cfg)[1], tls_ca, box)
        b = await selected_session(ports(cfg)[1], tls_ca, box)
        assert (await announce(a, "a", BIG)).startswith(b"+ ")
        yield a, b
        await a.close()
        await b.close()


async def announce(client: RawClient, tag: str, message: bytes) -> bytes:
    """Announce `message` as a synchronizing APPEND literal: the server's first answer."""
    await client.send(b"%b APPEND INBOX {%d}\r\n" % (tag.encode(), len(message)))
    return await client.line()


async def finish(client: RawClient, tag: str, message: bytes) -> None:
    await client.send(message + b"\r\n")
    reply = await client.until(tag)
    assert reply[-1].startswith(tag.encode() + b" OK"), reply


async def messages(client: RawClient) -> bytes:
    reply = await client.command("m", "STATUS INBOX (MESSAGES)")
    assert reply[-1].startswith(b"m OK"), reply
    return reply[0]


async def in_step(client: RawClient) -> None:
    assert (await client.command("n", "NOOP"))[-1] == b"n OK NOOP completed.\r\n"


async def test_a_literal_past_the_budget_waits_for_the_command_holding_it(
    databases, tls_files, tls_ca, tmp_path
):
    async with a_holds_the_budget(databases, tls_files, tls_ca, tmp_path, "budgetdone") as (a, b):
        # refused before B sends it: no "+", the tagged NO at once
        assert await announce(b, "b", SMALL) == b"b " + BUSY
        await in_step(b)  # B's next command is read as one
        await finish(a, "a", BIG)
        # A's command has ended: its bytes are free again
        assert (await announce(b, "b", SMALL)).startswith(b"+ ")
        await finish(b, "b", SMALL)
        assert b"MESSAGES 2" in await messages(b)


async def test_a_client_gone_mid_literal_gives_its_bytes_back(
    databases, tls_files, tls_ca, tmp_path
):
    async with a_holds_the_budget(databases, tls_files, tls_ca, tmp_path, "budgetgone") as (a, b):
        await a.send(BIG[:1000])
        assert await announce(b, "b", SMALL) == b"b " + BUSY
        a.writer.transport.abort()
        # the server sees A gone when its read fails; until then B is refused, then admitted
        for _ in range(200):
            answer = await announce(b, "b", SMALL)
            if answer != b"b " + BUSY:
                break
            await asyncio.sleep(0.05)
        assert answer.startswith(b"+ "), answer
        await finish(b, "b", SMALL)
        assert b"MESSAGES 1" in await messages(b)


async def test_a_non_synchronizing_literal_past_the_budget_is_skipped(
    databases, tls_files, tls_ca, tmp_path
):
    async with a_holds_the_budget(databases, tls_files, tls_ca, tmp_path, "budgetplus") as (a, b):
        # LITERAL+: the client sends it unasked; it is read past, never run as commands
        smuggled = SMALL + b"\r\nx CREATE Smuggled\r\n"
        await b.send(b"b APPEND INBOX {%d+}\r\n%b\r\n" % (len(smuggled), smuggled))
        assert await b.until("b") == [b"b " + BUSY]
        await in_step(b)
        await finish(a, "a", BIG)
        assert b"MESSAGES 1" in await messages(b)
        listed = await b.command("l", 'LIST "" "*"')
        assert not any(b"Smuggled" in line for line in listed), listed
