"""QUOTA (RFC 9208) from the vaultbox's limits: one quota root "" for all its mailboxes, with
STORAGE (`max_bytes`, in KiB) and MESSAGE (`max_messages`) when the limits set them. The
limits are the operator's: SETQUOTA is refused. APPEND beyond them is NO [OVERQUOTA], as
delivery is refused beyond them."""

from __future__ import annotations

from encimap.imap.commands import AUTHENTICATED, command, never_writes, rev2
from encimap.imap.commands.mailbox import existing_mailbox, vaultbox_id
from encimap.imap.parser import Reader
from encimap.imap.session import Session, no
from encimap.store import recipients, vaultboxes

ROOT = ""


async def _resources(session: Session) -> list[str]:
    """`STORAGE used limit` / `MESSAGE used limit` for the limits the vaultbox has."""
    pool = session.server.pool
    vaultbox = await vaultboxes.vaultbox_by_id(pool, vaultbox_id(session))
    max_bytes = vaultboxes.limit(vaultbox.limits, "max_bytes")
    max_messages = vaultboxes.limit(vaultbox.limits, "max_messages")
    if max_bytes is None and max_messages is None:
        return []
    used = await vaultboxes.usage(pool, vaultbox.id)
    found = []
    if max_bytes is not None:  # RFC 9208 5.1: STORAGE in units of 1024 octets
        found.append(f"STORAGE {(used.bytes + 1023) // 1024} {max_bytes // 1024}")
    if max_messages is not None:
        found.append(f"MESSAGE {used.messages} {max_messages}")
    return found


def over_quota(recipient: recipients.Recipient, adding: int, size: int) -> bool:
    """Whether `adding` more messages of `size` bytes in all would exceed a limit (the usage
    is the vaultbox's counters, read with it when it has a quota)."""
    limits = recipient.vaultbox.limits
    max_bytes = vaultboxes.limit(limits, "max_bytes")
    max_messages = vaultboxes.limit(limits, "max_messages")
    return (max_messages is not None and recipient.messages + adding > max_messages) or (
        max_bytes is not None and recipient.bytes + size > max_bytes
    )


@command("GETQUOTAROOT", states=AUTHENTICATED, writes=never_writes)
async def getquotaroot(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    name = reader.mailbox()
    reader.end()
    mailbox = await existing_mailbox(session, name)
    resources = await _resources(session)
    roots = f' "{ROOT}"' if resources else ""
    session.untagged(f"QUOTAROOT {rev2.wire_name(session, mailbox.name)}{roots}")
    if resources:
        session.untagged(f'QUOTA "{ROOT}" ({" ".join(resources)})')
    return "OK Getquotaroot completed."


@command("GETQUOTA", states=AUTHENTICATED, writes=never_writes)
async def getquota(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    root = reader.astring().decode("utf-8", "replace")
    reader.end()
    resources = await _resources(session) if root == ROOT else []
    if not resources:
        raise no("[NONEXISTENT] No such quota root")
    session.untagged(f'QUOTA "{ROOT}" ({" ".join(resources)})')
    return "OK Getquota completed."


@command("SETQUOTA", states=AUTHENTICATED)
async def setquota(session: Session, _tag: str, reader: Reader) -> str:
    raise no("[NOPERM] Quotas are set by the operator")
