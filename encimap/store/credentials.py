"""Vaultbox login credentials: SMTP (`vaultbox_smtp_credentials`) and IMAP app passwords
(`imap_app_credentials`). The SMTP and IMAP credentials of one vaultbox share a username."""

from __future__ import annotations

import secrets
import string
import uuid
from dataclasses import dataclass
from typing import Literal

import asyncpg

from encimap.store.errors import Conflict, NotFound
from encimap.store.types import Executor

CredentialKind = Literal["smtp", "imap"]
_TABLE: dict[str, str] = {"smtp": "vaultbox_smtp_credentials", "imap": "imap_app_credentials"}
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class Credential:
    id: uuid.UUID
    kind: CredentialKind
    vaultbox_id: uuid.UUID
    username: str


def new_username(domain: str) -> str:
    """The unified vaultbox username: `encimap-{domain-with-dashes}-{6 random}`."""
    suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(6))
    return f"encimap-{domain.lower().replace('.', '-')}-{suffix}"


async def vaultbox_username(db: Executor, vaultbox_id: uuid.UUID) -> str | None:
    """The username already used by a live credential of the vaultbox, if any."""
    return await db.fetchval(
        """SELECT username FROM vaultbox_smtp_credentials WHERE vaultbox_id = $1 AND enabled
           UNION ALL
           SELECT username FROM imap_app_credentials
            WHERE vaultbox_id = $1 AND revoked_at IS NULL
           LIMIT 1""",
        vaultbox_id,
    )


async def username_owner(db: Executor, username: str) -> uuid.UUID | None:
    """The vaultbox that uses `username` for any credential, revoked ones included."""
    return await db.fetchval(
        """SELECT vaultbox_id FROM vaultbox_smtp_credentials WHERE username = $1
           UNION ALL
           SELECT vaultbox_id FROM imap_app_credentials WHERE username = $1
           LIMIT 1""",
        username,
    )


async def create_credential(
    db: Executor,
    *,
    kind: CredentialKind,
    vaultbox_id: uuid.UUID,
    username: str,
    password_hash: str,
) -> Credential:
    """Add a credential. An SMTP credential replaces a disabled one of the same username."""
    table = _TABLE[kind]
    try:
        if kind == "smtp":
            row = await db.fetchrow(
                """INSERT INTO vaultbox_smtp_credentials (vaultbox_id, username, password_hash)
                   VALUES ($1, $2, $3)
                   ON CONFLICT (username) DO UPDATE
                      SET password_hash = EXCLUDED.password_hash, enabled = true
                    WHERE vaultbox_smtp_credentials.vaultbox_id = EXCLUDED.vaultbox_id
                      AND NOT vaultbox_smtp_credentials.enabled
                   RETURNING id""",
                vaultbox_id,
                username,
                password_hash,
            )
        else:
            # Usernames are unique in the platform's table, revoked ones included: a revoked
            # credential of the same vaultbox is given the new password and revived.
            row = await db.fetchrow(
                """INSERT INTO imap_app_credentials (user_id, vaultbox_id, username, password_hash)
                   SELECT v.user_id, v.id, $2, $3 FROM vaultboxes v WHERE v.id = $1
                   ON CONFLICT (username) DO UPDATE
                      SET password_hash = EXCLUDED.password_hash, revoked_at = NULL
                    WHERE imap_app_credentials.vaultbox_id = EXCLUDED.vaultbox_id
                      AND imap_app_credentials.revoked_at IS NOT NULL
                   RETURNING id""",
                vaultbox_id,
                username,
                password_hash,
            )
    except asyncpg.UniqueViolationError:
        row = None
    if row is None:
        raise Conflict(f"{username} already has a live {kind} credential ({table})")
    return Credential(row["id"], kind, vaultbox_id, username)


async def set_password(
    db: Executor, kind: CredentialKind, username: str, password_hash: str
) -> None:
    if kind == "smtp":
        status = await db.execute(
            "UPDATE vaultbox_smtp_credentials SET password_hash = $2 WHERE username = $1",
            username,
            password_hash,
        )
    else:
        status = await db.execute(
            """UPDATE imap_app_credentials SET password_hash = $2
                WHERE username = $1 AND revoked_at IS NULL""",
            username,
            password_hash,
        )
    if status.endswith(" 0"):
        raise NotFound(f"no live {kind} credential {username}")


async def revoke_credentials(db: Executor, username: str) -> list[CredentialKind]:
    """Revoke every live credential with this username: IMAP soft-revoked, SMTP disabled."""
    revoked: list[CredentialKind] = []
    imap = await db.execute(
        "UPDATE imap_app_credentials SET revoked_at = now() "
        "WHERE username = $1 AND revoked_at IS NULL",
        username,
    )
    if not imap.endswith(" 0"):
        revoked.append("imap")
    smtp = await db.execute(
        "UPDATE vaultbox_smtp_credentials SET enabled = false WHERE username = $1 AND enabled",
        username,
    )
    if not smtp.endswith(" 0"):
        revoked.append("smtp")
    if not revoked:
        raise NotFound(f"no live credential {username}")
    return revoked
