"""The platform database (motorical_db): users and MotorBlocks.

The platform owns these tables; encimap's services only read them. The CLI writes here for a
fresh or demo installation. A user created here gets a locked password hash ('!', which no
password matches): the platform's own sign-up sets a real one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from encimap.store.errors import Conflict, NotFound
from encimap.store.types import Executor


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str


@dataclass(frozen=True)
class MotorBlock:
    id: uuid.UUID
    user_id: uuid.UUID
    username: str
    domain: str | None
    rate_limit_per_hour: int | None


LOCKED_PASSWORD_HASH = "!"  # noqa: S105 - matches no password


async def create_user(db: Executor, email: str) -> User:
    """A platform user; refused when the address exists in any letter case (the platform's
    own UNIQUE constraint is case-sensitive)."""
    try:
        row = await db.fetchrow(
            """INSERT INTO users (email, password_hash)
               SELECT $1::text, $2
                WHERE NOT EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($1::text))
               RETURNING id, email""",
            email,
            LOCKED_PASSWORD_HASH,
        )
    except asyncpg.UniqueViolationError:
        row = None
    if row is None:
        raise Conflict(f"user {email} already exists")
    return User(row["id"], row["email"])


async def find_user(db: Executor, email: str) -> User:
    row = await db.fetchrow(
        "SELECT id, email FROM users WHERE lower(email) = lower($1) ORDER BY email = $1 DESC",
        email,
    )
    if row is None:
        raise NotFound(f"no user {email}")
    return User(row["id"], row["email"])


async def create_motorblock(
    db: Executor,
    *,
    user_id: uuid.UUID,
    username: str,
    password_hash: str,
    domain: str | None,
    rate_limit_per_hour: int,
) -> MotorBlock:
    try:
        row = await db.fetchrow(
            """INSERT INTO motor_blocks (user_id, username, password_hash, domain,
                                         rate_limit_per_hour)
               VALUES ($1, $2, $3, lower($4), $5)
               RETURNING id, user_id, username, domain, rate_limit_per_hour""",
            user_id,
            username,
            password_hash,
            domain,
            rate_limit_per_hour,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"MotorBlock username {username} already exists") from None
    return MotorBlock(**dict(row))


async def set_motorblock_password(db: Executor, username: str, password_hash: str) -> None:
    status = await db.execute(
        "UPDATE motor_blocks SET password_hash = $2 WHERE username = $1", username, password_hash
    )
    if status.endswith(" 0"):
        raise NotFound(f"no MotorBlock {username}")
