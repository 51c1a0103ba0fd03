"""Vaultbox OpenPGP public keys (table `openpgp_keys`) and a vaultbox's key preference."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from encimap.openpgp import KeyInfo
from encimap.store.errors import NotFound, StoreError
from encimap.store.types import Executor

KeyPreference = Literal["openpgp", "smime"]
PREFERENCES = ("openpgp", "smime")


@dataclass(frozen=True)
class StoredKey:
    id: uuid.UUID
    vaultbox_id: uuid.UUID
    fingerprint: str
    armored_key: str
    user_ids: list[str]
    key_algorithm: str | None
    expires_at: datetime | None
    created_at: datetime


async def put_key(
    db: Executor, *, vaultbox_id: uuid.UUID, armored_key: str, info: KeyInfo
) -> tuple[uuid.UUID, bool]:
    """Store a key `openpgp.check_key` described as `info`; a key already stored (same
    fingerprint) is replaced by this newer copy. Returns (id, whether it was new)."""
    row = await db.fetchrow(
        """INSERT INTO openpgp_keys (vaultbox_id, fingerprint, armored_key, user_ids,
                                     key_algorithm, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (vaultbox_id, fingerprint) DO UPDATE
              SET armored_key = EXCLUDED.armored_key, user_ids = EXCLUDED.user_ids,
                  key_algorithm = EXCLUDED.key_algorithm, expires_at = EXCLUDED.expires_at,
                  is_active = true
           RETURNING id, (xmax = 0) AS inserted""",
        vaultbox_id,
        info.fingerprint,
        armored_key,
        list(info.user_ids),
        info.algorithm,
        info.expires,
    )
    return row["id"], row["inserted"]


async def replace_stored_key(
    db: Executor, *, vaultbox_id: uuid.UUID, fingerprint: str, armored_key: str
) -> bool:
    """Replace a stored key by an update of itself that can no longer be used (a revocation,
    a new expiry); the intake then stops encrypting to it. False if it is not stored."""
    result = await db.execute(
        """UPDATE openpgp_keys SET armored_key = $3
            WHERE vaultbox_id = $1 AND fingerprint = $2 AND is_active""",
        vaultbox_id,
        fingerprint.upper(),
        armored_key,
    )
    return result != "UPDATE 0"


async def keys_of(db: Executor, vaultbox_id: uuid.UUID) -> list[StoredKey]:
    """Active OpenPGP keys of a vaultbox, newest first (usability is the caller's check)."""
    rows = await db.fetch(
        """SELECT id, vaultbox_id, fingerprint, armored_key, user_ids, key_algorithm,
                  expires_at, created_at FROM openpgp_keys
             WHERE vaultbox_id = $1 AND is_active ORDER BY created_at DESC""",
        vaultbox_id,
    )
    return [StoredKey(**dict(row)) for row in rows]


async def remove_key(db: Executor, vaultbox_id: uuid.UUID, fingerprint: str) -> None:
    """Delete a key of a vaultbox by its fingerprint (spaces and case ignored)."""
    wanted = fingerprint.replace(" ", "").upper()
    result = await db.execute(
        "DELETE FROM openpgp_keys WHERE vaultbox_id = $1 AND fingerprint = $2",
        vaultbox_id,
        wanted,
    )
    if result == "DELETE 0":
        raise NotFound(f"no OpenPGP key {wanted} for this vaultbox")


async def set_preference(db: Executor, vaultbox_id: uuid.UUID, preference: str) -> None:
    """Which kind of key a vaultbox with both encrypts with: "openpgp" or "smime"."""
    if preference not in PREFERENCES:
        raise StoreError(f"key preference must be one of {', '.join(PREFERENCES)}")
    await db.execute(
        "UPDATE vaultboxes SET key_preference = $2 WHERE id = $1", vaultbox_id, preference
    )


async def preference_of(db: Executor, vaultbox_id: uuid.UUID) -> str:
    """The vaultbox's key preference ("openpgp" or "smime")."""
    return await db.fetchval("SELECT key_preference FROM vaultboxes WHERE id = $1", vaultbox_id)


async def published_keys(db: Executor, domain: str) -> list[tuple[str, str]]:
    """What the Web Key Directory serves for `domain` (case-insensitive): (alias, armoured
    public key) of every active key of every active vaultbox there, newest first."""
    rows = await db.fetch(
        """SELECT v.alias, k.armored_key FROM vaultboxes v
             JOIN openpgp_keys k ON k.vaultbox_id = v.id AND k.is_active
            WHERE lower(v.domain) = lower($1) AND v.status = 'active'
            ORDER BY k.created_at DESC""",
        domain,
    )
    return [(row["alias"], row["armored_key"]) for row in rows]
