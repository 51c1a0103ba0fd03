"""A hostile client against the real IMAP service and PostgreSQL, over real sockets: input shaped
to cost the server more than its size (many tiny literals, a search of many sequence sets),
to desynchronise the command stream (a refused literal's content read as a command) or to get
a reply no client can match (an over-long line inside a command). Memory and work are counted
(tracemalloc, values handed to the store), never timed."""

from __future__ import annotations

import tracemalloc

import pytest

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
)


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

