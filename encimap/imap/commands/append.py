"""APPEND (with UIDPLUS APPENDUID, RFC 3502 MULTIAPPEND: several messages, stored all or
none; RFC 3516 literal8 data; RFC 4469 CATENATE, in `catenate.py`): clients save sent mail
and drafts here. A message that is not already encrypted is
encrypted first, as delivery does (S/MIME or PGP/MIME, per the vaultbox's keys and
preference), so nothing in plaintext is stored; without a usable key the APPEND is refused."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime

from encimap import encryption, mimeinfo, smime
from encimap.delivery import recipients as delivery_recipients
from encimap.imap import wire
from encimap.imap.commands import AUTHENTICATED, catenate, command, quota
from encimap.imap.commands.mailbox import vaultbox_id
from encimap.imap.commands.store import normalize_flags
from encimap.imap.parser import Reader
from encimap.imap.session import Session, no
from encimap.logs import get_logger
from encimap.mime import EncryptionResult
from encimap.store import NotFound, mailboxes, messages, recipients

log = get_logger(__name__)

_OFFLOAD_AT = 256 * 1024  # encrypt larger messages in a thread, off the event loop


@dataclass
class _Message:
    flags: list[str]
    internal_date: datetime | None
    data: bytes = b""
    parts: list[catenate.Part] | None = None  # CATENATE: assembled after the parse


def _messages(reader: Reader, limit: int) -> list[_Message]:
    """One or more `[(flags)] [date-time] (literal / literal8 / CATENATE (...))` (RFC 3502
    MULTIAPPEND: several), at most `limit` (else NO [LIMIT], before any is encrypted)."""
    found: list[_Message] = []
    while True:
        if len(found) == limit:
            raise no(f"[LIMIT] More than {limit} messages in one APPEND")
        flags: list[str] = []
        internal_date: datetime | None = None
        if reader.peek() == 0x28:
            flags = normalize_flags(reader.flag_list())
            reader.sp()
        if reader.peek() == 0x22:
            internal_date = reader.date_time()
            reader.sp()
        if reader.accept(b"CATENATE "):
            found.append(_Message(flags, internal_date, parts=catenate.parse(reader)))
        else:
            found.append(_Message(flags, internal_date, reader.literal(binary=True)))
        if reader.at_end():
            return found
        reader.sp()


@command("APPEND", states=AUTHENTICATED)
async def append(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    name = reader.mailbox()
    reader.sp()
    appended = _messages(reader, session.config.max_append_messages)
    reader.end()
    pool = session.server.pool
    owner = vaultbox_id(session)
    mailbox = await mailboxes.find_mailbox(pool, owner, name)
    if mailbox is None:
        raise no("[TRYCREATE] Mailbox doesn't exist: " + name[:200])
    parts = sum(len(message.parts or ()) for message in appended)
    if parts > session.config.max_catenate_parts:
        raise no(f"[LIMIT] More than {session.config.max_catenate_parts} CATENATE parts")
    # the messages of one APPEND in all, assembled ones included, are bounded like its
    # literals (the session reads at most max_literal_size of them)
    budget = session.config.max_literal_size - sum(
        len(message.data) for message in appended if message.parts is None
    )
    for message in appended:
        if message.parts is not None:
            message.data = await catenate.assemble(session, message.parts, budget)
            budget -= len(message.data)
    if not all(message.data for message in appended):
        raise no("Empty message")
    recipient = await recipients.recipient_by_id(pool, owner)
    if recipient is None:
        raise NotFound(f"no vaultbox {owner}")
    server = session.server
    keys = delivery_recipients.recipient_keys(recipient, server.config, server.certificates)
    described = [await _encrypted(keys, message.data) for message in appended]
    stored = [result for result, _ in described]
    if quota.over_quota(recipient, len(stored), sum(len(r.message) for r in stored)):
        raise no("[OVERQUOTA] The vaultbox is full")
    async with pool.acquire() as conn:
        # All of them or none (RFC 3502); one message is one statement, its own transaction
        # (no BEGIN and COMMIT round trips while its mailbox is locked).
        several = conn.transaction() if len(stored) > 1 else contextlib.nullcontext()
        async with several:
            inserted = [
                await messages.insert_message(
                    conn,
                    vaultbox_id=owner,
                    mailbox_id=mailbox.id,
                    body=result.message,
                    flags=message.flags,
                    internal_date=message.internal_date,
                    subject_encrypted=result.subject_encrypted,
                    encryption_method=result.algorithm or "none",
                    certificate_fingerprints=result.recipient_fingerprints,
                    info=info,
                )
                for message, (result, info) in zip(appended, described, strict=True)
            ]
    if session.selected is not None and session.selected.mailbox.id == mailbox.id:
        session.selected.expect_new()
    for row, result in zip(inserted, stored, strict=True):
        log.info(
            "imap.append",
            session=session.id,
            mailbox=mailbox.id,
            uid=row.uid,
            size=len(result.message),
            encrypted_here=not result.already_encrypted,
        )
    uids = wire.ordered_sequence_set([row.uid for row in inserted])
    return f"OK [APPENDUID {inserted[0].uidvalidity} {uids}] Append completed."


async def _encrypted(
    keys: encryption.Keys, data: bytes
) -> tuple[EncryptionResult, mimeinfo.MessageInfo]:
    """The message to store and its description, both made in a worker thread when large:
    already-encrypted mail is stored (and described) as it is, and a hostile structure costs
    seconds to describe at tens of megabytes."""

    def encrypt() -> tuple[EncryptionResult, mimeinfo.MessageInfo]:
        result = encryption.encrypt(data, keys)
        return result, mimeinfo.describe(result.message)

    try:
        if len(data) > _OFFLOAD_AT:
            return await asyncio.to_thread(encrypt)
        return encrypt()
    except smime.NoUsableCertificate:
        raise no("[CANNOT] The vaultbox has no usable certificate or OpenPGP key") from None
    except encryption.ENCRYPTION_ERRORS as exc:
        raise no(f"[CANNOT] Cannot encrypt this message: {exc}") from None
