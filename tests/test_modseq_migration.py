"""sql/encimap/006_modseq.sql on a database that already holds mail: encrypted_emails is not
rewritten (same file on disk), the rows stored before read as MODSEQ 1, and the first change
after the migration takes a higher mod-sequence."""

from __future__ import annotations

import uuid

from encimap import migrations
from encimap.migrations import Outcome
from encimap.pgcluster import LocalCluster
from encimap.store import messages, modseqs
from tests.platform_support import insert_vaultbox, seeded_databases


async def test_adding_modseq_keeps_the_table_and_reads_old_rows_as_1(pg_cluster: LocalCluster):
    tag = uuid.uuid4().hex[:8]
    databases = await seeded_databases(pg_cluster, f"mq_mot_{tag}", f"mq_enc_{tag}")
    conn = await databases.connect()
    try:
        before_006 = [m for m in migrations.available_migrations("encimap") if m.version < 6]
        await conn.execute(migrations._BOOKKEEPING)
        for migration in before_006:  # the schema as encimap left it before mod-sequences
            async with conn.transaction():
                await migrations._run_file(conn, migration.path, Outcome())
                await conn.execute(
                    "INSERT INTO schema_migrations (component, version, name) "
                    "VALUES ('encimap', $1, $2)",
                    migration.version,
                    migration.name,
                )
        box = await insert_vaultbox(conn, uuid.uuid4(), "old", "modseq.test")
        inbox = await conn.fetchval(
            "INSERT INTO mailboxes (vaultbox_id, name, uid_next) VALUES ($1, 'INBOX', 3) "
            "RETURNING id",
            box.id,
        )
        await conn.execute(
            """INSERT INTO encrypted_emails (vaultbox_id, mailbox_id, uid, message_id, sender,
                                             recipient, body, size_bytes, flags)
               SELECT $1, $2, g, 'm', 's', 'r', '\\x00', 1, '{}' FROM generate_series(1, 2) g""",
            box.id,
            inbox,
        )
        file_before = await conn.fetchval("SELECT pg_relation_filenode('encrypted_emails')")

        outcome = await migrations.migrate(conn, "encimap")

        assert [m.version for m in outcome.versioned] == [
            m.version for m in migrations.available_migrations("encimap") if m.version >= 6
        ]
        assert await conn.fetchval("SELECT pg_relation_filenode('encrypted_emails')") == (
            file_before
        )
        assert (
            await conn.fetchval("SELECT count(*) FROM encrypted_emails WHERE modseq IS NULL") == 2
        )
        assert await modseqs.highest(conn, inbox) == 1
        rows = await messages.fetch_rows(conn, inbox, [1, 2], ["modseq"])
        assert [row["modseq"] for row in rows] == [1, 1]
        stored = await messages.store_flags(
            conn,
            vaultbox_id=box.id,
            mailbox_id=inbox,
            uids=[2],
            mode="add",
            flags=["\\Seen"],
            origin="test",
        )
        assert stored.changed == [(2, ["\\Seen"], 2)]
        assert [row["uid"] for row in await modseqs.changed_since(conn, inbox, 1)] == [2]
    finally:
        await conn.close()
