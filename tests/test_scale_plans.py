"""Query plans at realistic sizes: 20,000 vaultboxes (100,000 mailboxes), 100,000 IMAP and
100,000 SMTP credentials, one mailbox of 100,000 messages beside 60,000 others.

What is checked is what each statement reads, not how long it takes: a login or an RCPT reads
a handful of index entries and never scans a table; a statement given UIDs reads about as many
rows as it was given, with the generic plan a pooled connection ends up using
(`plan_cache_mode = force_generic_plan`) as with a custom one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from encimap.store import (
    flagsync,
    logins,
    mailboxes,
    messages,
    modseqs,
    recipients,
    search,
    uidsets,
)
from tests.support import Databases

pytestmark = pytest.mark.timeout(600)

VAULTBOXES = 20_000
CREDENTIALS = 100_000
MESSAGES = 100_000
BIG_TABLES = {
    "vaultboxes",
    "imap_app_credentials",
    "vaultbox_smtp_credentials",
    "encrypted_emails",
    "mailboxes",
    "public_certificates",
    "certificates",
    "vaultbox_usage",
    "motor_blocks",
}

_FILL = r"""
INSERT INTO vaultboxes (user_id, domain, name, alias, limits)
SELECT gen_random_uuid(), 'd' || (g % 100) || '.test', 'v', 'a' || g,
       CASE WHEN g % 2 = 0 THEN '{"max_messages": 1000000}'::jsonb ELSE '{}' END
  FROM generate_series(1, $1::int) g;
INSERT INTO imap_app_credentials (user_id, username, vaultbox_id, password_hash, revoked_at)
SELECT v.user_id, 'imap' || g, v.id, 'x', CASE WHEN g % 10 = 0 THEN now() END
  FROM generate_series(1, $2::int) g
  JOIN vaultboxes v ON v.alias = 'a' || (1 + g % $1::int);
INSERT INTO vaultbox_smtp_credentials (vaultbox_id, username, password_hash)
SELECT v.id, 'smtp' || g, 'x'
  FROM generate_series(1, $2::int) g
  JOIN vaultboxes v ON v.alias = 'a' || (1 + g % $1::int);
INSERT INTO certificates (vaultbox_id, certificate_type, pem_content)
SELECT v.id, 'public', 'pem' FROM vaultboxes v;
-- Three messages in 20,000 other INBOXes, 100,000 in a2's.
INSERT INTO encrypted_emails (vaultbox_id, mailbox_id, uid, message_id, sender, recipient,
                              size_bytes, flags)
SELECT m.vaultbox_id, m.id, g, 'x', 's', 'r', 10, '{}'
  FROM mailboxes m JOIN vaultboxes v ON v.id = m.vaultbox_id AND v.alias <> 'a2',
       generate_series(1, 3) g
 WHERE m.name = 'INBOX';
INSERT INTO encrypted_emails (vaultbox_id, mailbox_id, uid, message_id, sender, recipient,
                              size_bytes, flags, search_headers)
SELECT m.vaultbox_id, m.id, g, '<' || g || '@x>', 's', 'r', 1000 + g % 7,
       CASE WHEN g % 3 = 0 THEN ARRAY['\Seen'] WHEN g % 1000 = 0 THEN ARRAY['\Deleted']
            ELSE '{}' END,
       jsonb_build_object('from', 'sender' || g % 100)
  FROM mailboxes m JOIN vaultboxes v ON v.id = m.vaultbox_id AND v.alias = 'a2',
       generate_series(1, $3::int) g
 WHERE m.name = 'INBOX';
UPDATE mailboxes m SET uid_next = 1 + (SELECT max(uid) FROM encrypted_emails e
                                        WHERE e.mailbox_id = m.id)
 WHERE m.name = 'INBOX';
"""


@pytest.fixture(scope="module")
def big(databases: Databases) -> Iterator[Databases]:
    async def fill() -> None:
        conn = await databases.connect()
        try:
            await conn.execute(
                _FILL.replace("$1::int", str(VAULTBOXES))
                .replace("$2::int", str(CREDENTIALS))
                .replace("$3::int", str(MESSAGES))
            )
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()

    asyncio.run(fill())
    yield databases


@pytest_asyncio.fixture(params=["force_custom_plan", "force_generic_plan"])
async def conn(big: Databases, request: pytest.FixtureRequest) -> AsyncIterator[asyncpg.Connection]:
    connection = await big.connect()
    await connection.execute(f"SET plan_cache_mode = {request.param}")
    try:
        yield connection
    finally:
        await connection.close()


class Explaining:
    """An executor that runs each statement under EXPLAIN ANALYZE on a real connection,
    keeps the plans, and answers as if nothing was found."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.plans: list[dict[str, Any]] = []

    async def fetchrow(self, query: str, *args: Any) -> None:
        async with self.conn.transaction():
            plan = await self.conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args)
            self.plans.append(json.loads(plan)[0]["Plan"])
            raise _Rollback

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        await self.fetchrow(query, *args)
        return []


class _Rollback(Exception):
    pass


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _explain(conn: asyncpg.Connection, call) -> list[dict[str, Any]]:
    explaining = Explaining(conn)
    # Six runs: a prepared statement's plan may change after the fifth.
    for _ in range(6):
        try:
            await call(explaining)
        except _Rollback:
            pass
    return explaining.plans


def _assert_indexed(plans: list[dict[str, Any]], max_rows: int = 10) -> None:
    for plan in plans:
        for node in _nodes(plan):
            relation = node.get("Relation Name")
            if relation in BIG_TABLES:
                assert "Seq Scan" not in node["Node Type"], (relation, plan)
                read = node["Actual Rows"] * node["Actual Loops"]
                read += node.get("Rows Removed by Filter", 0)
                assert read <= max_rows, (relation, read, plan)


@pytest.mark.parametrize("username", ["imap77777", "imap50000", "nobody"])
async def test_imap_login_reads_one_credential(conn: asyncpg.Connection, username: str):
    plans = await _explain(conn, lambda db: logins.vaultbox_imap_login(db, username))
    _assert_indexed(plans)


@pytest.mark.parametrize("username", ["smtp77777", "nobody"])
async def test_smtp_login_reads_one_credential(conn: asyncpg.Connection, username: str):
    plans = await _explain(conn, lambda db: logins.vaultbox_smtp_login(db, username))
    _assert_indexed(plans)


@pytest.mark.parametrize(
    "addresses",
    [["a2@d2.test"], ["A4+x@D4.test", "a4@d4.test"], ["a3@d3.test"], ["none@d1.test"]],
)
async def test_rcpt_lookup_reads_one_vaultbox_and_its_usage(
    conn: asyncpg.Connection, addresses: list[str]
):
    """a2 has a quota and 100,000 messages: its RCPT reads one usage row, not the messages."""
    plans = await _explain(conn, lambda db: recipients.find_recipient(db, addresses))
    _assert_indexed(plans)


async def _inbox(conn: asyncpg.Connection, alias: str) -> mailboxes.Mailbox:
    vaultbox_id = await conn.fetchval("SELECT id FROM vaultboxes WHERE alias = $1", alias)
    found = await mailboxes.find_mailbox(conn, vaultbox_id, "INBOX")
    assert found is not None
    return found


async def _rows_read(conn: asyncpg.Connection, call) -> int:
    """Rows of encrypted_emails (heap and index entries) a call reads, in a transaction that
    is rolled back; from pg_stat_xact_*, which count this transaction only."""
    async with conn.transaction():
        before = await _reads(conn)
        await call()
        read = await _reads(conn) - before
        raise _Rollback(read)


async def _reads(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(
        # Rows returned by sequential scans of the table and entries read from its indexes.
        """SELECT sum(pg_stat_get_xact_tuples_returned(c.oid))::bigint FROM pg_class c
            WHERE c.oid = 'encrypted_emails'::regclass
               OR c.oid IN (SELECT indexrelid FROM pg_index
                             WHERE indrelid = 'encrypted_emails'::regclass)"""
    )


async def _read_by(conn: asyncpg.Connection, call) -> int:
    counts = []
    for _ in range(6):  # past the fifth run, where a generic plan may take over
        try:
            await _rows_read(conn, call)
        except _Rollback as done:
            counts.append(done.args[0])
    return max(counts)


SCATTERED = list(range(7, MESSAGES, 997))  # 101 UIDs spread over the whole mailbox


async def test_uid_statements_read_what_they_are_given(conn: asyncpg.Connection):
    inbox = await _inbox(conn, "a2")
    trash = (await mailboxes.find_mailbox(conn, inbox.vaultbox_id, "Trash")).id  # type: ignore[union-attr]
    given = len(SCATTERED)
    # Each statement reads each given row a few times at most (the range, then the row to
    # change), never the mailbox: 100,000 rows.
    bound = 4 * given
    calls = {
        "fetch": lambda: messages.fetch_rows(conn, inbox.id, SCATTERED, ["flags", "envelope"]),
        "sizes": lambda: messages.sizes(conn, inbox.id, SCATTERED),
        "store": lambda: messages.store_flags(
            conn,
            vaultbox_id=inbox.vaultbox_id,
            mailbox_id=inbox.id,
            uids=SCATTERED,
            mode="add",
            flags=["\\Flagged"],
            origin="test",
        ),
        "uid expunge": lambda: messages.expunge(
            conn,
            vaultbox_id=inbox.vaultbox_id,
            mailbox_id=inbox.id,
            origin="test",
            uids=SCATTERED,
        ),
        "expunge": lambda: messages.expunge(
            conn, vaultbox_id=inbox.vaultbox_id, mailbox_id=inbox.id, origin="test"
        ),
        "copy": lambda: messages.copy_messages(
            conn,
            vaultbox_id=inbox.vaultbox_id,
            source_id=inbox.id,
            target_id=trash,
            uids=SCATTERED,
            origin="test",
            move=True,
        ),
        "search": lambda: search.search(conn, inbox.id, search.Flag("\\Seen", False), SCATTERED),
        "search uid set": lambda: search.search(
            conn,
            inbox.id,
            search.Uids(tuple(zip(*uidsets.ranges(SCATTERED), strict=True))),
            SCATTERED,
        ),
    }
    read = {name: await _read_by(conn, call) for name, call in calls.items()}
    # EXPUNGE reads the \Deleted messages only (100 of them), through its partial index.
    assert all(count <= bound for count in read.values()), str(read)


async def test_whole_mailbox_fetch_reads_each_row_once(conn: asyncpg.Connection):
    """`UID FETCH 1:* (FLAGS)` is one range: 100,000 rows read once, whatever the plan."""
    inbox = await _inbox(conn, "a2")
    everything = list(range(1, MESSAGES + 1))
    read = await _read_by(conn, lambda: messages.fetch_rows(conn, inbox.id, everything, ["flags"]))
    assert MESSAGES <= read <= MESSAGES + 10
    every_other = everything[::2]
    read = await _read_by(conn, lambda: messages.sizes(conn, inbox.id, every_other))
    assert len(every_other) <= read <= len(every_other) + 10


async def test_status_reads_no_message(conn: asyncpg.Connection):
    inbox = await _inbox(conn, "a2")
    assert await _read_by(conn, lambda: mailboxes.counts(conn, inbox.id)) == 0
    counts = await mailboxes.counts(conn, inbox.id)
    assert counts.messages == MESSAGES
    assert counts.unseen == MESSAGES - MESSAGES // 3


async def test_select_reads_each_message_once(conn: asyncpg.Connection):
    """SELECT (one function call, with the \\Recent claim) reads the 100,000 UIDs once and
    the first unseen message at the start of the mailbox; a small mailbox's SELECT reads its
    own three, not the 160,000 rows of the table."""

    async def select(alias: str, expected: int) -> None:
        box = await conn.fetchval("SELECT id FROM vaultboxes WHERE alias = $1", alias)
        summary = await flagsync.select(conn, box, "INBOX", claim_recent=True)
        assert summary is not None and len(summary.uids) == expected
        assert summary.first_unseen_uid == 1 and summary.recent_from == 1

    read = await _read_by(conn, lambda: select("a2", MESSAGES))
    assert MESSAGES <= read <= MESSAGES + 10, read
    assert await _read_by(conn, lambda: select("a3", 3)) <= 10


async def test_changedsince_reads_what_changed(conn: asyncpg.Connection):
    """CONDSTORE's resync (`UID FETCH 1:* (FLAGS) (CHANGEDSINCE n)`, SELECT QRESYNC) reads the
    101 messages changed since n through the modseq index, not the 100,000 of the mailbox."""
    inbox = await _inbox(conn, "a2")
    given = len(SCATTERED)
    # The other tests' rolled-back changes left index entries at the mod-sequence this one
    # takes (it is taken again after each rollback); an index scan would visit those too.
    # INDEX_CLEANUP ON: with so few dead rows VACUUM would otherwise leave the index alone.
    await conn.execute("VACUUM (INDEX_CLEANUP ON) encrypted_emails")
    try:
        async with conn.transaction():
            since = await modseqs.highest(conn, inbox.id)
            await messages.store_flags(
                conn,
                vaultbox_id=inbox.vaultbox_id,
                mailbox_id=inbox.id,
                uids=SCATTERED,
                mode="add",
                flags=["\\Answered"],
                origin="test",
            )
            changed = await modseqs.changed_since(conn, inbox.id, since)
            assert [row["uid"] for row in changed] == SCATTERED
            assert await modseqs.changed_since(conn, inbox.id, since + 1) == []
            plans = await _explain(conn, lambda db: modseqs.changed_since(db, inbox.id, since))
            _assert_indexed(plans, max_rows=given)
            assert all("encrypted_emails_modseq_idx" in json.dumps(plan) for plan in plans), plans
            read = await _read_by(conn, lambda: modseqs.changed_since(conn, inbox.id, since))
            assert read <= 2 * given, read
            raise _Rollback
    except _Rollback:
        pass


async def test_status_deleted_reads_the_deleted_messages_only(conn: asyncpg.Connection):
    """STATUS DELETED (IMAP4rev2) counts through EXPUNGE's partial index: the 67 messages
    flagged \\Deleted are read, not the mailbox's 100,000."""
    inbox = await _inbox(conn, "a2")
    deleted = len([g for g in range(1000, MESSAGES + 1, 1000) if g % 3])
    assert await mailboxes.count_deleted(conn, inbox.id) == deleted
    read = await _read_by(conn, lambda: mailboxes.count_deleted(conn, inbox.id))
    assert read <= 2 * deleted, read


def test_fixture_sizes(big: Databases) -> None:
    async def sizes() -> tuple[int, int, int]:
        conn = await big.connect()
        try:
            return tuple(  # type: ignore[return-value]
                [
                    await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
                    for table in ("imap_app_credentials", "mailboxes", "encrypted_emails")
                ]
            )
        finally:
            await conn.close()

    assert asyncio.run(sizes()) == (CREDENTIALS, 5 * VAULTBOXES, MESSAGES + 3 * (VAULTBOXES - 1))
