"""RCPT: which vaultbox an address delivers to, and whether it can take mail now."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from cryptography import x509

from encimap import db, smime
from encimap.config import Config
from encimap.delivery import replies
from encimap.delivery.replies import Reply
from encimap.store import StoreError
from encimap.store import recipients as store_recipients
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


class CertificateCache:
    """Parsed certificates that passed the time-independent checks for an address.

    Keyed by the stored PEM text itself (not its fingerprint column, which nothing forces to
    match it) with the address and the mismatch setting; entries are the certificate, or None
    when `smime.check_certificate` refuses it. Only the validity period can change with time,
    so it is checked again on every use. Bounded: emptied when full.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: dict[tuple[str, str, bool], x509.Certificate | None] = {}
        self._max_entries = max_entries

    def usable(
        self,
        pems: Sequence[str],
        address: str,
        *,
        allow_address_mismatch: bool,
        now: datetime | None = None,
    ) -> list[x509.Certificate]:
        """The certificates among `pems` that mail to `address` may be encrypted to `now`."""
        now = now or datetime.now(UTC)
        usable = []
        for pem in pems:
            key = (pem, address.lower(), allow_address_mismatch)
            if key in self._entries:
                certificate = self._entries[key]
            else:
                certificate = self._check(pem, address, allow_address_mismatch)
                if len(self._entries) >= self._max_entries:
                    self._entries.clear()
                self._entries[key] = certificate
            if (
                certificate is not None
                and certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc
            ):
                usable.append(certificate)
        return usable

    @staticmethod
    def _check(pem: str, address: str, allow_address_mismatch: bool) -> x509.Certificate | None:
        try:
            certificate = smime.load_certificate(pem)
            # Checked at a moment inside its validity period: what is left are the checks
            # that time does not change; `usable` compares the dates on each use.
            smime.check_certificate(
                certificate,
                address,
                now=certificate.not_valid_before_utc,
                allow_address_mismatch=allow_address_mismatch,
            )
        except smime.CertificateError:
            return None
        return certificate


async def resolve(
    pool: asyncpg.Pool, address: str, config: Config, cache: CertificateCache
) -> Target | Reply:
    """The Target for `address`, or the reply refusing it."""
    settings = config.intake
    try:
        async with db.acquire(pool, config.database.connect_timeout) as conn:
            found = await store_recipients.find_recipient(
                conn, candidates(address, settings.recipient_delimiter)
            )
    except StoreError:
        return replies.UNKNOWN_RECIPIENT
    except DATABASE_ERRORS:
        return replies.TEMPORARY_FAILURE
    if found is None:
        return replies.UNKNOWN_RECIPIENT
    vaultbox = found.vaultbox
    if not vaultbox.active:
        return replies.MAILBOX_DISABLED
    if _over_quota(vaultbox.limits, found):
        return replies.OVER_QUOTA
    usable = cache.usable(
        found.certificates,
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


def _over_quota(limits: dict[str, Any], used: store_recipients.Recipient) -> bool:
    max_messages = _limit(limits, "max_messages")
    max_bytes = _limit(limits, "max_bytes")
    return (max_messages is not None and used.messages >= max_messages) or (
        max_bytes is not None and used.bytes >= max_bytes
    )


def _limit(limits: dict[str, Any], key: str) -> int | None:
    value = limits.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
