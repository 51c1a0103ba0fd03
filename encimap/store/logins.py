"""Login lookups for the auth engine: one indexed SELECT per table, by username.

Each function returns the credential row whatever its state, with `live` telling whether it may
log in now (credential enabled / not revoked, vaultbox or MotorBlock active and allowed to send),
so the engine can log why a login was refused without telling the client.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

from encimap.store.types import Executor
from encimap.store.vaultboxes import parse_limits

LoginKind = Literal["motorblock", "vaultbox_smtp", "vaultbox_imap"]


@dataclass(frozen=True)
class LoginRow:
    kind: LoginKind
    credential_id: uuid.UUID
    username: str
    password_hash: str | None  # the platform allows a credential without one: it never logs in
    live: bool
    user_id: uuid.UUID
    vaultbox_id: uuid.UUID | None = None
    motorblock_id: uuid.UUID | None = None
    domains: tuple[str, ...] = ()  # MotorBlock: the domains it may send from
    address: str = ""
    hourly_limit: int | None = None  # None: the configured default applies


def _hourly_limit(limits: dict[str, Any]) -> int | None:
    value = limits.get("hourly_send_limit")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _vaultbox_row(kind: LoginKind, row: asyncpg.Record) -> LoginRow:
    return LoginRow(
        kind=kind,
        credential_id=row["id"],
        username=row["username"],
        password_hash=row["password_hash"],
        live=row["live"],
        user_id=row["user_id"],
        vaultbox_id=row["vaultbox_id"],
        address=f"{row['alias']}@{row['domain']}".lower(),
        hourly_limit=_hourly_limit(parse_limits(row["limits"])),
    )


async def motorblock_login(db: Executor, username: str) -> LoginRow | None:
    """A MotorBlock sends from its domain; one without a domain (the platform allows NULL)
    from its user's verified domains."""
    row = await db.fetchrow(
        """SELECT b.id, b.user_id, b.username, b.password_hash, b.rate_limit_per_hour,
                  coalesce(b.smtp_enabled, false) AS live,
                  CASE WHEN b.domain IS NOT NULL THEN ARRAY[lower(b.domain)]
                       ELSE ARRAY(SELECT DISTINCT lower(d.domain) FROM domains d
                                   WHERE d.user_id = b.user_id
                                     AND d.verification_status = 'verified')
                  END AS domains
             FROM motor_blocks b WHERE b.username = $1""",
        username,
    )
    if row is None:
        return None
    return LoginRow(
        kind="motorblock",
        credential_id=row["id"],
        username=row["username"],
        password_hash=row["password_hash"],
        live=row["live"],
        user_id=row["user_id"],
        motorblock_id=row["id"],
        domains=tuple(row["domains"]),
        hourly_limit=row["rate_limit_per_hour"],
    )


async def vaultbox_smtp_login(db: Executor, username: str) -> LoginRow | None:
    row = await db.fetchrow(
        """SELECT c.id, c.username, c.password_hash, c.vaultbox_id,
                  v.user_id, v.alias, v.domain, v.limits,
                  c.enabled AND coalesce(v.smtp_enabled, false)
                      AND v.status = 'active' AND c.password_hash IS NOT NULL AS live
             FROM vaultbox_smtp_credentials c JOIN vaultboxes v ON v.id = c.vaultbox_id
            WHERE c.username = $1""",
        username,
    )
    return _vaultbox_row("vaultbox_smtp", row) if row else None


async def vaultbox_imap_login(db: Executor, username: str) -> LoginRow | None:
    """The IMAP credential of `username` (usernames are unique, revoked ones included).

    The platform's legacy credentials name no vaultbox (vaultbox_id NULL): such a credential
    opens its user's vaultbox when the user has exactly one, and nothing otherwise."""
    row = await db.fetchrow(
        """SELECT c.id, c.username, c.password_hash, v.id AS vaultbox_id,
                  v.user_id, v.alias, v.domain, v.limits,
                  c.revoked_at IS NULL AND v.status = 'active'
                      AND c.password_hash IS NOT NULL AS live
             FROM imap_app_credentials c
             JOIN vaultboxes v ON v.id = coalesce(
                  c.vaultbox_id,
                  (SELECT (array_agg(w.id))[1] FROM vaultboxes w
                    WHERE w.user_id = c.user_id AND w.status IS DISTINCT FROM 'deleted'
                   HAVING count(*) = 1))
            WHERE c.username = $1""",
        username,
    )
    return _vaultbox_row("vaultbox_imap", row) if row else None
