"""What the intake needs at RCPT, in one query: the vaultbox an address delivers to, its usage
(only when it has a quota), its active public certificates and OpenPGP keys."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from encimap.store.types import Executor
from encimap.store.vaultboxes import Vaultbox, split_address, vaultbox_from_row

# `limits` keys that make RCPT count the vaultbox's stored messages and bytes.
QUOTA_KEYS = ["max_messages", "max_bytes"]


@dataclass(frozen=True)
class Recipient:
    vaultbox: Vaultbox
    messages: int  # stored messages and bytes; 0 when the vaultbox has no quota to check
    bytes: int
    certificates: tuple[str, ...]  # PEM of the active public certificates, newest first
    openpgp_keys: tuple[str, ...] = ()  # armoured active OpenPGP keys, newest first
    key_preference: str = "openpgp"  # the kind used when the vaultbox has both

    @property
    def counted(self) -> bool:
        """Whether usage was counted (the vaultbox has a quota): it changes with every
        delivery, so such a lookup is never reused."""
        return any(key in self.vaultbox.limits for key in QUOTA_KEYS)


# A Recipient from the vaultbox `v` and _USAGE.
_SELECT = """SELECT v.id, v.user_id, v.alias, v.domain, v.name, v.status, v.limits,
                  v.smtp_enabled, coalesce(u.messages, 0) AS messages,
                  coalesce(u.bytes, 0) AS bytes,
                  ARRAY(SELECT c.pem_content FROM public_certificates c
                         WHERE c.vaultbox_id = v.id ORDER BY c.created_at DESC) AS pems,
                  ARRAY(SELECT k.armored_key FROM openpgp_keys k
                         WHERE k.vaultbox_id = v.id AND k.is_active
                         ORDER BY k.created_at DESC) AS openpgp_keys,
                  v.key_preference"""
# The usage counters kept at write time (one row; none before the first message), read only
# for a vaultbox with a quota.
_USAGE = "LEFT JOIN vaultbox_usage u ON u.vaultbox_id = v.id AND v.limits ?| {quota_keys}::text[]"


async def find_recipient(db: Executor, addresses: Sequence[str]) -> Recipient | None:
    """The live vaultbox at the first of `addresses` that has one (case-insensitive).

    Raises StoreError if an address is not of the form alias@domain.
    """
    parts = [split_address(address) for address in addresses]
    row = await db.fetchrow(
        f"""{_SELECT}
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS a(alias, domain, rank)
             JOIN vaultboxes v ON lower(v.alias) = lower(a.alias)
                              AND lower(v.domain) = lower(a.domain)
                              -- the predicate of vaultboxes_address_key, so the
                              -- lookup is an index scan; then no status, no delivery
                              AND v.status IS DISTINCT FROM 'deleted'
                              AND v.status <> 'deleted'
             {_USAGE.format(quota_keys="$3")}
            ORDER BY a.rank
            LIMIT 1""",
        [alias for alias, _ in parts],
        [domain for _, domain in parts],
        QUOTA_KEYS,
    )
    return _recipient(row)


async def recipient_by_id(db: Executor, vaultbox_id: uuid.UUID) -> Recipient | None:
    """The same for a vaultbox by id, whatever its status (IMAP APPEND encrypts with it)."""
    row = await db.fetchrow(
        f"{_SELECT} FROM vaultboxes v {_USAGE.format(quota_keys='$2')} WHERE v.id = $1",
        vaultbox_id,
        QUOTA_KEYS,
    )
    return _recipient(row)


def _recipient(row: asyncpg.Record | None) -> Recipient | None:
    if row is None:
        return None
    return Recipient(
        vaultbox=vaultbox_from_row(row),
        messages=row["messages"],
        bytes=row["bytes"],
        certificates=tuple(row["pems"]),
        openpgp_keys=tuple(row["openpgp_keys"]),
        key_preference=row["key_preference"],
    )
