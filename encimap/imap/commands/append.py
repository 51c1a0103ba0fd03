"""APPEND (with UIDPLUS APPENDUID): clients save sent mail and drafts here. A message that is
not already encrypted is encrypted first, as delivery does (S/MIME or PGP/MIME, per the
vaultbox's keys and preference), so nothing in plaintext is stored; without a usable key the
APPEND is refused."""

from __future__ import annotations

import asyncio
from datetime import datetime

from encimap import encryption, openpgp, smime
from encimap.imap.commands import AUTHENTICATED, command
from encimap.imap.commands.mailbox import vaultbox_id
from encimap.imap.commands.store import normalize_flags
from encimap.imap.parser import Reader
from encimap.imap.session import Session, no
from encimap.logs import get_logger
from encimap.mime import EncryptionResult
from encimap.store import certificates, mailboxes, messages, openpgp_keys, vaultboxes

log = get_logger(__name__)

_OFFLOAD_AT = 256 * 1024  # encrypt larger messages in a thread, off the event loop


@command("APPEND", states=AUTHENTICATED)
async def append(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    name = reader.mailbox()
    reader.sp()
    flags: list[str] = []
    internal_date: datetime | None = None
    if reader.peek() == 0x28:
        flags = normalize_flags(reader.flag_list())
        reader.sp()
    if reader.peek() == 0x22:
        internal_date = reader.date_time()
        reader.sp()
    data = reader.literal()
    reader.end()
    pool = session.server.pool
    owner = vaultbox_id(session)
    mailbox = await mailboxes.find_mailbox(pool, owner, name)
    if mailbox is None:
        raise no("[TRYCREATE] Mailbox doesn't exist: " + name[:200])
    if not data:
        raise no("Empty message")
    stored = await _encrypted(session, data)
    async with pool.acquire() as conn:
        inserted = await messages.insert_message(
            conn,
            vaultbox_id=owner,
            mailbox_id=mailbox.id,
            body=stored.message,
            flags=flags,
            internal_date=internal_date,
            subject_encrypted=stored.subject_encrypted,
            encryption_method=stored.algorithm or "none",
            certificate_fingerprints=stored.recipient_fingerprints,
        )
    if session.selected is not None and session.selected.mailbox.id == mailbox.id:
        session.selected.expect_new()
    log.info(
        "imap.append",
        session=session.id,
        mailbox=mailbox.id,
        uid=inserted.uid,
        size=len(stored.message),
        encrypted_here=not stored.already_encrypted,
    )
    return f"OK [APPENDUID {inserted.uidvalidity} {inserted.uid}] Append completed."


async def _encrypted(session: Session, data: bytes) -> EncryptionResult:
    pool = session.server.pool
    vaultbox = await vaultboxes.vaultbox_by_id(pool, vaultbox_id(session))
    stored = await certificates.public_certificates(pool, vaultbox.id)
    stored_keys = await openpgp_keys.keys_of(pool, vaultbox.id)
    preference = await openpgp_keys.preference_of(pool, vaultbox.id)
    config = session.server.config.smime
    mismatch = config.allow_address_mismatch
    keys = encryption.choose(
        smime.usable_certificates(
            [certificate.pem_content for certificate in stored],
            vaultbox.address,
            allow_address_mismatch=mismatch,
        ),
        openpgp.usable_keys(
            [key.armored_key for key in stored_keys],
            vaultbox.address,
            allow_address_mismatch=mismatch,
        ),
        preference,
        vaultbox.limits,
        config,
    )

    def encrypt() -> EncryptionResult:
        return encryption.encrypt(data, keys)

    try:
        if len(data) > _OFFLOAD_AT:
            return await asyncio.to_thread(encrypt)
        return encrypt()
    except smime.NoUsableCertificate:
        raise no("[CANNOT] The vaultbox has no usable certificate or OpenPGP key") from None
    except encryption.ENCRYPTION_ERRORS as exc:
        raise no(f"[CANNOT] Cannot encrypt this message: {exc}") from None
