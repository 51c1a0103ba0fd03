"""RCPT: which vaultbox an address delivers to, and whether it can take mail now."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from cryptography import x509

from encimap import smime
from encimap.config import Config
from encimap.delivery import replies
from encimap.delivery.replies import Reply
from encimap.store import StoreError, certificates, messages, vaultboxes
from encimap.store.vaultboxes import Vaultbox

# What a lost or failing database raises; the intake answers these with 451 4.3.0.
DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True)
class Target:
    """An accepted recipient: the vaultbox and what its copy is encrypted with."""

    address: str
    vaultbox: Vaultbox
    certificates: tuple[x509.Certificate, ...]
    profile: str
    hide_subject: bool


def candidates(address: str, delimiter: str) -> list[str]:
    """`address`, then the address without its `+detail` (RFC 5233 subaddress)."""
    local, _, domain = address.rpartition("@")
    if delimiter and delimiter in local:
        base = local.split(delimiter, 1)[0]
        if base:
            return [address, f"{base}@{domain}"]
    return [address]


async def resolve(pool: asyncpg.Pool, address: str, config: Config) -> Target | Reply:
    """The Target for `address`, or the reply refusing it."""
    settings = config.intake
    try:
        async with pool.acquire(timeout=config.database.connect_timeout) as conn:
            vaultbox = await _find(conn, address, settings.recipient_delimiter)
            if vaultbox is None:
                return replies.UNKNOWN_RECIPIENT
            if not vaultbox.active:
                return replies.MAILBOX_DISABLED
            if await _over_quota(conn, vaultbox):
                return replies.OVER_QUOTA
            stored = await certificates.public_certificates(conn, vaultbox.id)
    except StoreError:
        return replies.UNKNOWN_RECIPIENT
    except DATABASE_ERRORS:
        return replies.TEMPORARY_FAILURE
    usable = smime.usable_certificates(
        [certificate.pem_content for certificate in stored],
        vaultbox.address,
        allow_address_mismatch=config.smime.allow_address_mismatch,
    )
    if not usable:
        return (
            replies.NO_CERTIFICATE_REJECT
            if settings.missing_certificate == "reject"
            else replies.NO_CERTIFICATE_TEMPFAIL
        )
    limits = vaultbox.limits
    return Target(
        address=address,
        vaultbox=vaultbox,
        certificates=tuple(usable),
        profile=str(limits.get("smime_profile") or config.smime.default_profile),
        hide_subject=bool(limits.get("hide_subject", config.smime.hide_subject)),
    )


async def _find(conn: Any, address: str, delimiter: str) -> Vaultbox | None:
    for candidate in candidates(address, delimiter):
        vaultbox = await vaultboxes.find_vaultbox(conn, candidate)
        if vaultbox is not None:
            return vaultbox
    return None


async def _over_quota(conn: Any, vaultbox: Vaultbox) -> bool:
    max_messages = _limit(vaultbox.limits, "max_messages")
    max_bytes = _limit(vaultbox.limits, "max_bytes")
    if max_messages is None and max_bytes is None:
        return False
    used = await messages.usage(conn, vaultbox.id)
    return (max_messages is not None and used.messages >= max_messages) or (
        max_bytes is not None and used.bytes >= max_bytes
    )


def _limit(limits: dict[str, Any], key: str) -> int | None:
    value = limits.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
