"""The counters kept at write time (sql/encimap/repeatable/35_message_counters.sql): exact after
concurrent deliveries, APPENDs, COPY/MOVE, STORE, EXPUNGE and the platform's own inserts, with
no deadlock between them; STATUS and RCPT read them; `encimap db recount` repairs them."""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from datetime import UTC, datetime

import asyncpg

from encimap.store import counters, mailboxes, messages, recipients
from tests.support import Databases, make_vaultbox, run_cli, write_config_file

BODY = b"From: <a@sender.test>\r\nSubject: hi\r\n\r\nbody\r\n"
ORIGIN = "test"

# What the counters must say: counted from the rows themselves.
RECOUNT = r"""
SELECT m.id, m.messages, m.bytes, m.unseen,
       (SELECT count(*) FROM encrypted_emails e WHERE e.mailbox_id = m.id) AS real_messages,
       (SELECT coalesce(sum(size_bytes), 0) FROM encrypted_emails e
         WHERE e.mailbox_id = m.id) AS real_bytes,
       (SELECT count(*) FROM encrypted_emails e
         WHERE e.mailbox_id = m.id AND NOT e.flags @> ARRAY['\Seen']) AS real_unseen
  FROM mailboxes m WHERE m.vaultbox_id = $1 ORDER BY m.id
"""
USAGE = """
SELECT u.messages, u.bytes,
       (SELECT count(*) FROM encrypted_emails e WHERE e.vaultbox_id = $1) AS real_messages,
       (SELECT coalesce(sum(size_bytes), 0) FROM encrypted_emails e
         WHERE e.vaultbox_id = $1) AS real_bytes
  FROM vaultbox_usage u WHERE u.vaultbox_id = $1
"""


async def _assert_exact(conn: asyncpg.Connection, vaultbox_id: uuid.UUID) -> list[asyncpg.Record]:
    rows = await conn.fetch(RECOUNT, vaultbox_id)
    for row in rows:
        assert (row["messages"], row["bytes"], row["unseen"]) == (
            row["real_messages"],
            row["real_bytes"],
            row["real_unseen"],
        ), dict(row)
    usage = await conn.fetchrow(USAGE, vaultbox_id)
    assert (usage["messages"], usage["bytes"]) == (usage["real_messages"], usage["real_bytes"])
    return rows


def _message(vaultbox_id: uuid.UUID, n: int) -> messages.NewMessage:
    body = BODY + b"%d\r\n" % n
    return messages.NewMessage(
        vaultbox_id=vaultbox_id,
        recipient="count@vault.test",
        sender="a@sender.test",
        message_id=f"<{n}@sender.test>",
        body=body,
        body_sha256=hashlib.sha256(body).hexdigest(),
        size_original=len(body),
        encryption_method="none",
        certificate_fingerprints=[],
        subject_encrypted=None,
        internal_date=datetime.now(UTC),
        outcome="passthrough",
    )


async def test_counters_stay_exact_under_concurrent_writers(databases: Databases):
    box = (await make_vaultbox(databases, "count@vault.test")).vaultbox
    pool = await asyncpg.create_pool(databases.encimap_url, min_size=8, max_size=8)
    assert pool is not None
    async with pool.acquire() as conn:
        boxes = {m.name: m.id for m in await mailboxes.list_mailboxes(conn, box.id)}
    inbox, sent = boxes["INBOX"], boxes["Sent"]
    rng = random.Random(15)
    numbers = iter(range(1_000_000))
    done: dict[str, int] = {}

    async def uids(mailbox_id: int) -> list[int]:
        return [r["uid"] for r in await messages.uids_and_flags(pool, mailbox_id)]

    async def some(mailbox_id: int) -> list[int]:
        present = await uids(mailbox_id)
        return rng.sample(present, min(len(present), rng.randint(1, 12)))

    async def deliver() -> None:
        await messages.deliver(
            pool,
            _message(box.id, next(numbers)),
            queue_id="Q",
            duplicate_window_seconds=0,
            duration_ms=1,
        )

    async def append() -> None:
        async with pool.acquire() as conn:
            await messages.insert_message(
                conn,
                vaultbox_id=box.id,
                body=BODY * rng.randint(1, 3),
                mailbox_id=rng.choice([inbox, sent]),
                flags=rng.choice([[], ["\\Seen"]]),
            )

    async def platform_insert() -> None:
        # The platform's own INSERT (no mailbox): placed in the INBOX by the trigger.
        await pool.execute(
            """INSERT INTO encrypted_emails (vaultbox_id, message_id, sender, recipient,
                                             body_encrypted)
               SELECT $1, 'p' || g, 's', 'r', repeat('x', 10 * g) FROM generate_series(1, 3) g""",
            box.id,
        )

    async def store() -> None:
        async with pool.acquire() as conn:
            await messages.store_flags(
                conn,
                vaultbox_id=box.id,
                mailbox_id=inbox,
                uids=await some(inbox),
                mode=rng.choice(["add", "remove", "replace"]),
                flags=rng.choice([["\\Seen"], ["\\Deleted"], ["\\Seen", "\\Deleted"], []]),
                origin=ORIGIN,
            )

    async def expunge() -> None:
        async with pool.acquire() as conn:
            await messages.expunge(
                conn,
                vaultbox_id=box.id,
                mailbox_id=rng.choice([inbox, sent]),
                origin=ORIGIN,
                uids=rng.choice([None, await some(inbox)]),
            )

    async def copy() -> None:
        source, target = rng.choice([(inbox, sent), (sent, inbox)])
        async with pool.acquire() as conn:
            await messages.copy_messages(
                conn,
                vaultbox_id=box.id,
                source_id=source,
                target_id=target,
                uids=await some(source),
                origin=ORIGIN,
                move=rng.random() < 0.5,
            )

    writers = [deliver, append, platform_insert, store, expunge, copy]

    async def worker() -> None:
        for _ in range(40):
            writer = rng.choice(writers)
            await writer()  # a deadlock or any other error fails the test
            done[writer.__name__] = done.get(writer.__name__, 0) + 1

    try:
        await asyncio.gather(*(worker() for _ in range(8)))
        async with pool.acquire() as conn:
            rows = await _assert_exact(conn, box.id)
            assert await conn.fetchval("SELECT encimap_recount($1)", box.id) is False
            status = await mailboxes.counts(conn, inbox)
            assert status.messages == next(r["real_messages"] for r in rows if r["id"] == inbox)
    finally:
        await pool.close()
    assert set(done) == {writer.__name__ for writer in writers}
    assert sum(r["real_messages"] for r in rows) > 0


async def test_store_and_expunge_of_one_mailbox_do_not_deadlock(databases: Databases):
    """Many STOREs and EXPUNGEs of the same messages at once: every one completes."""
    box = (await make_vaultbox(databases, "race@vault.test")).vaultbox
    pool = await asyncpg.create_pool(databases.encimap_url, min_size=6, max_size=6)
    assert pool is not None
    async with pool.acquire() as conn:
        inbox = (await mailboxes.find_mailbox(conn, box.id, "INBOX")).id
        for _ in range(300):
            await messages.insert_message(conn, vaultbox_id=box.id, body=BODY, mailbox_id=inbox)

    async def store(reverse: bool) -> None:
        for _ in range(15):
            uids = [r["uid"] for r in await messages.uids_and_flags(pool, inbox)]
            async with pool.acquire() as conn:
                await messages.store_flags(
                    conn,
                    vaultbox_id=box.id,
                    mailbox_id=inbox,
                    uids=sorted(uids, reverse=reverse),
                    mode="add",
                    flags=["\\Deleted"] if reverse else ["\\Seen"],
                    origin=ORIGIN,
                )

    async def expunge() -> None:
        for _ in range(15):
            async with pool.acquire() as conn:
                await messages.expunge(conn, vaultbox_id=box.id, mailbox_id=inbox, origin=ORIGIN)
                await messages.insert_message(conn, vaultbox_id=box.id, body=BODY, mailbox_id=inbox)

    try:
        await asyncio.gather(store(False), store(True), expunge(), expunge(), store(False))
        async with pool.acquire() as conn:
            await _assert_exact(conn, box.id)
    finally:
        await pool.close()


async def test_quota_at_rcpt_reads_the_usage_counter(databases: Databases):
    box = (await make_vaultbox(databases, "quota@vault.test")).vaultbox
    conn = await databases.connect()
    try:
        await conn.execute(
            """UPDATE vaultboxes SET limits = '{"max_messages": 100}' WHERE id = $1""", box.id
        )
        for n in range(3):
            await messages.deliver(
                conn,
                _message(box.id, n),
                queue_id="Q",
                duplicate_window_seconds=0,
                duration_ms=1,
            )
        found = await recipients.find_recipient(conn, ["quota@vault.test"])
        assert found is not None
        assert (found.messages, found.bytes) == (
            3,
            sum(len(_message(box.id, n).body) for n in range(3)),
        )
        assert await counters.usage(conn, box.id) == counters.Usage(found.messages, found.bytes)
        # The RCPT statement reads the usage row, never the vaultbox's messages.
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT * FROM vaultbox_usage u WHERE u.vaultbox_id = $1",
            box.id,
        )
        assert "encrypted_emails" not in plan
    finally:
        await conn.close()


async def test_db_recount_repairs_counters(databases: Databases, tmp_path):
    box = (await make_vaultbox(databases, "repair@vault.test")).vaultbox
    conn = await databases.connect()
    try:
        inbox = (await mailboxes.find_mailbox(conn, box.id, "INBOX")).id
        for _ in range(4):
            await messages.insert_message(conn, vaultbox_id=box.id, body=BODY, mailbox_id=inbox)
        await conn.execute("UPDATE mailboxes SET messages = 99, unseen = 0 WHERE id = $1", inbox)
        await conn.execute("UPDATE vaultbox_usage SET bytes = 1 WHERE vaultbox_id = $1", box.id)
        config_file = write_config_file(tmp_path / "encimap.toml", databases)
        result = run_cli("db", "recount", config_file=config_file)
        assert result.returncode == 0, result.stderr
        assert " 1 corrected" in result.stdout
        await _assert_exact(conn, box.id)
        counts = await mailboxes.counts(conn, inbox)
        assert (counts.messages, counts.unseen, counts.size) == (4, 4, 4 * len(BODY))
    finally:
        await conn.close()


async def test_placement_of_legacy_rows_keeps_counters_exact(databases: Databases):
    """Rows the platform's old service stored before encimap (written here with triggers off,
    as they predate them), counted by the recount as migration 003 does, then placed in
    batches by encimap_place_messages beside new deliveries."""
    box = (await make_vaultbox(databases, "legacy@vault.test")).vaultbox
    conn = await databases.connect()
    try:
        await conn.execute("SET session_replication_role = replica")
        ids = await conn.fetch(
            """INSERT INTO encrypted_emails (vaultbox_id, message_id, sender, recipient,
                                             body_encrypted, processed_at)
               SELECT $1, 'old' || g, 's', 'r', repeat('y', 100 + g), now() - g * interval '1h'
                 FROM generate_series(1, 40) g RETURNING id""",
            box.id,
        )
        await conn.execute("SET session_replication_role = origin")
        assert await conn.fetchval("SELECT encimap_recount($1)", box.id) is True
        await _assert_exact(conn, box.id)
        ids = [row["id"] for row in ids]
        for start in range(0, len(ids), 15):
            assert await conn.fetchval(
                "SELECT encimap_place_messages($1::uuid[])", ids[start : start + 15]
            ) == len(ids[start : start + 15])
            await messages.deliver(
                conn,
                _message(box.id, start),
                queue_id="Q",
                duplicate_window_seconds=0,
                duration_ms=1,
            )
        rows = await _assert_exact(conn, box.id)
        assert sum(r["real_messages"] for r in rows) == 40 + 3
    finally:
        await conn.close()
