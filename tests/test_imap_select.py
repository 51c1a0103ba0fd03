"""SELECT and EXAMINE (RFC 3501 6.3.1, 6.3.2) read the mailbox, its UIDs and claim \\Recent in
one query (`encimap_select_mailbox`); \\Recent goes to one session only, however many select
at once while mail arrives (RFC 3501 2.3.2); the mailbox row is locked only when there is
something to claim."""

from __future__ import annotations

import asyncio

import pytest

from encimap import db
from encimap.store import mailboxes
from tests.imap_support import RawClient, imap_config, make_box, ports, running_imap, store

SESSIONS = 6


@pytest.fixture
def cfg(databases, tls_files):
    return imap_config(databases, tls_files, max_connections_per_user=SESSIONS + 5)


@pytest.fixture
def statements(monkeypatch) -> list[str]:
    """Every statement the service's pools send from now on (PooledConnection.observe logs
    them all), LISTEN aside."""
    sent: list[str] = []
    observe = db.PooledConnection.observe

    def logged(self: db.PooledConnection, query) -> None:
        if not query.query.startswith("LISTEN"):
            sent.append(query.query)
        observe(self, query)

    monkeypatch.setattr(db.PooledConnection, "observe", logged)
    return sent


async def _sessions(port: int, tls_ca, box, count: int = SESSIONS) -> list[RawClient]:
    clients = [await RawClient.connect(port, tls_ca) for _ in range(count)]
    for client in clients:
        await client.login(box)
    return clients


def _claims(statements: list[str]) -> list[str]:
    return [statement for statement in statements if "encimap_claim_recent" in statement]


def _message(number: int) -> bytes:
    return f"Subject: s{number}\r\nMessage-ID: <s{number}@example.org>\r\n\r\nbody\r\n".encode()


def _ok(reply: list[bytes]) -> list[bytes]:
    assert reply[-1].split(b" ")[1] == b"OK", reply
    return reply


def _recent_uids(reply: list[bytes]) -> set[int]:
    line = next(line for line in reply if line.startswith(b"* SEARCH"))
    return {int(n) for n in line.split()[2:]}


async def test_select_and_examine_are_one_query(databases, cfg, tls_ca, tmp_path, statements):
    """Every statement the service sends is logged by the pool's connections (PooledConnection
    .observe); a SELECT sends one, whatever the mode, and a missing mailbox is answered after
    that same one. The LISTEN round trip of the events barrier that ends every command in the
    selected state is the listener's, not the command's."""
    box = await make_box(databases, "onequery@example.test", tmp_path)
    for number in range(3):
        await store(databases, box, _message(number), flags=("\\Seen",) if number == 0 else ())
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        client = await RawClient.connect(tls_port, tls_ca)
        rev2 = await RawClient.connect(tls_port, tls_ca)
        try:
            for session in (client, rev2):
                await session.login(box)
            _ok(await rev2.command("e", "ENABLE IMAP4rev2"))
            for session, command, expected in (
                (client, "SELECT INBOX", b"* 3 RECENT\r\n"),
                (client, "EXAMINE inbox", b"* 0 RECENT\r\n"),  # claimed just before
                (client, "SELECT Trash", b"* 0 EXISTS\r\n"),
                (client, "SELECT INBOX (CONDSTORE)", b"* OK [UNSEEN 2] First unseen.\r\n"),
                (rev2, "SELECT INBOX", b"* 3 EXISTS\r\n"),
                (rev2, "EXAMINE Trash", b"* 0 EXISTS\r\n"),
            ):
                statements.clear()
                reply = _ok(await session.command("s", command))
                assert expected in reply, (command, reply)
                assert len(statements) == 1, (command, statements)
                assert "encimap_select_mailbox" in statements[0], statements
            statements.clear()
            reply = await client.command("n", "SELECT Nowhere")
            assert reply == [b"n NO [NONEXISTENT] Mailbox doesn't exist: Nowhere\r\n"], reply
            assert len(statements) == 1, statements
            # the failed SELECT left the mailbox selected before it (RFC 3501 6.3.1)
            reply = await client.command("f", "FETCH 1 (FLAGS)")
            assert reply[-1].startswith(b"f BAD"), reply
        finally:
            for session in (client, rev2):
                await session.close()


async def test_recent_goes_to_one_of_the_sessions_that_select_at_once(
    databases, cfg, tls_ca, tmp_path
):
    """Sessions select the mailbox together, round after round, while mail arrives: each
    message is \\Recent in exactly one session over all rounds. EXAMINE sees the messages no
    session has had as \\Recent, and takes none of them."""
    box = await make_box(databases, "together@example.test", tmp_path)
    delivered = [(await store(databases, box, _message(n))).uid for n in range(4)]
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        clients = await _sessions(tls_port, tls_ca, box)
        try:
            examiner = clients[0]
            reply = _ok(await examiner.command("e", "EXAMINE INBOX"))
            assert b"* 4 RECENT\r\n" in reply, reply
            seen: list[int] = []
            for number in range(4, 10):

                async def deliver(number: int = number) -> None:
                    delivered.append((await store(databases, box, _message(number))).uid)

                replies = await asyncio.gather(
                    deliver(), *(client.command("s", "SELECT INBOX") for client in clients)
                )
                for reply in replies[1:]:
                    _ok(reply)
                for client in clients:  # mail that came after a SELECT's read, then the count
                    _ok(await client.command("n", "NOOP"))
                for client in clients:
                    seen.extend(_recent_uids(_ok(await client.command("r", "UID SEARCH RECENT"))))
            assert sorted(seen) == delivered, (seen, delivered)
        finally:
            for client in clients:
                await client.close()


async def test_select_locks_the_mailbox_only_to_claim(databases, cfg, tls_ca, tmp_path):
    """While a writer holds the mailbox row, a SELECT with nothing to claim and an EXAMINE
    answer at once; a SELECT that has new mail to claim waits for the writer, then has it."""
    box = await make_box(databases, "locks@example.test", tmp_path)
    await store(databases, box, _message(1))
    _, tls_port = ports(cfg)
    writer = await databases.connect()
    try:
        inbox = await mailboxes.find_mailbox(writer, box.id, "INBOX")
        assert inbox is not None
        async with running_imap(cfg):
            first, second = [await RawClient.connect(tls_port, tls_ca) for _ in "fs"]
            try:
                for client in (first, second):
                    await client.login(box)
                _ok(await first.command("s", "SELECT INBOX"))  # claims UID 1
                async with writer.transaction():
                    await _lock(writer, inbox.id)
                    assert b"* 0 RECENT\r\n" in _ok(await second.command("s", "SELECT INBOX"))
                await store(databases, box, _message(2))
                async with writer.transaction():
                    await _lock(writer, inbox.id)
                    assert b"* 1 RECENT\r\n" in _ok(await second.command("e", "EXAMINE INBOX"))
                    claim = asyncio.ensure_future(second.command("c", "SELECT INBOX"))
                    while not await writer.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted"
                    ):
                        assert not claim.done(), claim.result()
                        await asyncio.sleep(0.05)
                    assert not claim.done()
                reply = _ok(await claim)
                assert b"* 2 EXISTS\r\n" in reply and b"* 1 RECENT\r\n" in reply, reply
            finally:
                for client in (first, second):
                    await client.close()
    finally:
        await writer.close()


async def _lock(conn, mailbox_id: int) -> None:
    """Hold the mailbox row as a writer does until its transaction ends."""
    await conn.execute("SELECT 1 FROM mailboxes WHERE id = $1 FOR NO KEY UPDATE", mailbox_id)


async def test_new_mail_is_claimed_once_however_many_sessions_sync_at_once(
    databases, cfg, tls_ca, tmp_path, statements
):
    """The sessions of one process that learn of the same new mail together ask the database
    for its \\Recent claim once; what a SELECT read is not claimed again."""
    box = await make_box(databases, "claimonce@example.test", tmp_path)
    await store(databases, box, _message(0))
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        clients = await _sessions(tls_port, tls_ca, box)
        try:
            for client in clients:
                _ok(await client.command("s", "SELECT INBOX"))
            for client in clients:  # the first SELECT claimed message 1; nobody asks again
                _ok(await client.command("n", "NOOP"))
            assert _claims(statements) == []
            for round_ in range(3):
                await store(databases, box, _message(round_ + 1))
                replies = await asyncio.gather(*(client.command("n", "NOOP") for client in clients))
                assert sum(b"* 1 RECENT\r\n" in _ok(reply) for reply in replies) <= 1
                assert len(_claims(statements)) == round_ + 1, statements
        finally:
            for client in clients:
                await client.close()
