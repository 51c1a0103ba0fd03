"""The delivery statement and the shared insert path (sql/encimap/repeatable/30_store_message.sql),
called as the roles that use them: what each stores, logs, notifies and leaves alone."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

import asyncpg
import pytest

from encimap.store import events, messages
from encimap.store.errors import NotFound
from tests.support import Databases, make_vaultbox

BODY = b"From: <a@sender.test>\r\nSubject: hi\r\nMessage-ID: <m1@sender.test>\r\n\r\nbody\r\n"


async def _as_role(databases: Databases, role: str) -> asyncpg.Connection:
    conn = await databases.connect()
    await conn.execute(f"SET ROLE {role}")
    return conn


def _message(vaultbox_id, message_id: str) -> messages.NewMessage:
    return messages.NewMessage(
        vaultbox_id=vaultbox_id,
        recipient="deliver@vault.test",
        sender="a@sender.test",
        message_id=message_id,
        body=BODY,
        body_sha256=hashlib.sha256(BODY).hexdigest(),
        size_original=len(BODY),
        encryption_method="none",
        certificate_fingerprints=[],
        subject_encrypted=None,
        internal_date=datetime.now(UTC),
        outcome="passthrough",
    )


async def _deliver(conn: asyncpg.Connection, message: messages.NewMessage) -> messages.Delivered:
    return await messages.deliver(
        conn, message, queue_id="Q1", duplicate_window_seconds=600, duration_ms=1
    )


async def test_deliver_stores_notifies_and_logs_once_per_delivery(databases: Databases):
    box = (await make_vaultbox(databases, "deliver@vault.test")).vaultbox
    admin = await databases.connect()
    conn = await _as_role(databases, "encimap_intake")
    payloads: asyncio.Queue[str] = asyncio.Queue()
    await admin.add_listener(events.CHANNEL, lambda *args: payloads.put_nowait(args[3]))
    try:
        first = await _deliver(conn, _message(box.id, "<one@sender.test>"))
        second = await _deliver(conn, _message(box.id, "<two@sender.test>"))
        again = await _deliver(conn, _message(box.id, "<one@sender.test>"))
        assert (first.uid, second.uid) == (1, 2) and second.mailbox_id == first.mailbox_id
        assert not first.duplicate and not second.duplicate
        # A retry is answered with the stored copy and burns no UID.
        assert again == messages.Delivered(first.email_id, first.mailbox_id, first.uid, True)
        uid_next = await admin.fetchval(
            "SELECT uid_next FROM mailboxes WHERE id = $1", first.mailbox_id
        )
        assert uid_next == 3
        third = await _deliver(conn, _message(box.id, "<three@sender.test>"))
        assert third.uid == 3
        logs = await admin.fetch(
            """SELECT email_id, outcome FROM email_processing_logs
                WHERE vaultbox_id = $1 ORDER BY id""",
            box.id,
        )
        assert [(row["email_id"], row["outcome"]) for row in logs] == [
            (first.email_id, "passthrough"),
            (second.email_id, "passthrough"),
            (first.email_id, "duplicate"),
            (third.email_id, "passthrough"),
        ]
        received = [await asyncio.wait_for(payloads.get(), 5) for _ in range(3)]
        assert received == [f"{box.id}:{first.mailbox_id}:{uid}" for uid in (1, 2, 3)]
        assert payloads.empty()
    finally:
        await conn.close()
        await admin.close()


async def test_insert_into_a_missing_mailbox_is_not_found_and_changes_nothing(
    databases: Databases,
):
    box = (await make_vaultbox(databases, "append@vault.test")).vaultbox
    conn = await _as_role(databases, "encimap_imap")
    try:
        before = await conn.fetch("SELECT id, uid_next FROM mailboxes ORDER BY id")
        with pytest.raises(NotFound):
            await messages.insert_message(
                conn, vaultbox_id=box.id, body=BODY, mailbox_name="No such folder"
            )
        stored = await messages.insert_message(
            conn, vaultbox_id=box.id, body=BODY, mailbox_name="Sent", flags=["\\Seen"]
        )
        assert stored.uid == 1 and stored.uidvalidity > 0
        after = await conn.fetch("SELECT id, uid_next FROM mailboxes ORDER BY id")
        changed = {row["id"] for row in after} ^ {row["id"] for row in before}
        assert not changed
        assert [dict(row) for row in after if row["id"] != stored.mailbox_id] == [
            dict(row) for row in before if row["id"] != stored.mailbox_id
        ]
    finally:
        await conn.close()


async def test_a_mailbox_never_holds_one_uid_twice(databases: Databases):
    box = (await make_vaultbox(databases, "unique@vault.test")).vaultbox
    conn = await _as_role(databases, "encimap_imap")
    try:
        stored = await messages.insert_message(conn, vaultbox_id=box.id, body=BODY)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                """INSERT INTO encrypted_emails (vaultbox_id, mailbox_id, uid, body, size_bytes,
                                                 message_id, sender, recipient)
                   VALUES ($1, $2, $3, '\\x00', 1, '', '', '')""",
                box.id,
                stored.mailbox_id,
                stored.uid,
            )
    finally:
        await conn.close()
