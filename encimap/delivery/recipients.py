"""RCPT: which vaultbox an address delivers to, and whether it can take mail now."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pysequoia
from cryptography import x509

from encimap import db, encryption, openpgp, smime
from encimap.config import Config
from encimap.delivery import replies
from encimap.delivery.replies import Reply
from encimap.metrics import RECIPIENT_LOOKUPS
from encimap.store import StoreError, events, vaultboxes
from encimap.store import recipients as store_recipients
from encimap.store.vaultboxes import Vaultbox

# Announces every change to vaultboxes, certificates or OpenPGP keys
# (sql/encimap/repeatable/20_recipients_notify.sql).
RECIPIENTS_CHANNEL = "encimap_recipients"


@dataclass(frozen=True)
class Target:
    """An accepted recipient: the vaultbox and what its copy is encrypted with."""

    address: str
    vaultbox: Vaultbox
    keys: encryption.Keys


def candidates(address: str, delimiter: str) -> list[str]:
    """`address`, then the address without its `+detail` (RFC 5233 subaddress)."""
    local, _, domain = address.rpartition("@")
    if delimiter and delimiter in local:
        base = local.split(delimiter, 1)[0]
        if base:
            return [address, f"{base}@{domain}"]
    return [address]


class OpenPGPKeyCache:
    """Parsed OpenPGP keys that passed `openpgp.check_key` for an address when first seen.

    Keyed like CertificateCache by the stored armoured text, the address and the mismatch
    setting; None for a refused key. What time changes (expiry, subkey validity) is checked
    again with `openpgp.usable` when the last check is more than USABLE_RECHECK seconds old (it
    costs a trial encryption, about 1 ms for RSA-4096; a key that expires in between fails at
    DATA with 451 4.3.0, and the retry gets 451 4.7.1). A revocation or any other change of a
    stored key changes its text, so it is checked in full at once. Bounded: the least recently
    used entry goes first.
    """

    USABLE_RECHECK = 60.0

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[tuple[str, str, bool], pysequoia.Cert | None] = OrderedDict()
        self._usable_until: dict[tuple[str, str, bool], float] = {}
        self._max_entries = max_entries

    def usable(
        self, armored: Sequence[str], address: str, *, allow_address_mismatch: bool
    ) -> list[pysequoia.Cert]:
        """The keys among `armored` that mail to `address` may be encrypted to now."""
        found = []
        now = time.monotonic()
        for text in armored:
            key = (text, address.lower(), allow_address_mismatch)
            if key in self._entries:
                self._entries.move_to_end(key)
            else:
                if len(self._entries) >= self._max_entries:
                    oldest, _ = self._entries.popitem(last=False)
                    self._usable_until.pop(oldest, None)
                self._entries[key] = self._check(text, address, allow_address_mismatch)
                self._usable_until[key] = now + self.USABLE_RECHECK
            cert = self._entries[key]
            if cert is None:
                continue
            if self._usable_until.get(key, 0.0) <= now:
                if not openpgp.usable(cert):
                    continue
                self._usable_until[key] = now + self.USABLE_RECHECK
            found.append(cert)
        return found

    @staticmethod
    def _check(text: str, address: str, allow_address_mismatch: bool) -> pysequoia.Cert | None:
        try:
            cert, _info = openpgp.check_key(
                text, address, allow_address_mismatch=allow_address_mismatch
            )
        except openpgp.KeyRefused:
            return None
        return cert


class CertificateCache:
    """Parsed certificates that passed the time-independent checks for an address.

    Keyed by the stored PEM text itself (not its fingerprint column, which nothing forces to
    match it) with the address and the mismatch setting; entries are the certificate, or None
    when `smime.check_certificate` refuses it. Only the validity period can change with time,
    so it is checked again on every use. Bounded: the least recently used entry goes first.
    `openpgp` is the same for the vaultboxes' OpenPGP keys.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[tuple[str, str, bool], x509.Certificate | None] = OrderedDict()
        self._max_entries = max_entries
        self.openpgp = OpenPGPKeyCache(max_entries)

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
                self._entries.move_to_end(key)
            else:
                certificate = self._check(pem, address, allow_address_mismatch)
                if len(self._entries) >= self._max_entries:
                    self._entries.popitem(last=False)
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


class RecipientCache:
    """Recent RCPT lookups, by the addresses looked up (misses too), reused for a while.

    Kept only while its watch LISTENs on RECIPIENTS_CHANNEL: any committed change to a vaultbox
    or a certificate empties it, and so does any moment the channel may have gone unheard (a
    lost connection also means RCPT asks the database again, and answers 451 if it is gone).
    A lookup that was under way while the cache was emptied is not kept, since it may have
    read the old rows. Lookups of a vaultbox with a quota are never kept (its usage changes
    with every delivery), and no entry is older than `max_age` seconds. Certificate dates are
    still checked on every RCPT (CertificateCache). Start `watch` on a running loop.
    """

    def __init__(self, pool: asyncpg.Pool, max_age: float, max_entries: int = 4096) -> None:
        self._max_age = max_age
        self._max_entries = max_entries
        self._entries: OrderedDict[
            tuple[str, ...], tuple[float, store_recipients.Recipient | None]
        ] = OrderedDict()
        self._generation = 0
        self.watch = events.Watch(
            pool, RECIPIENTS_CHANNEL, on_notify=lambda _payload: self.clear(), on_deaf=self.clear
        )

    def clear(self) -> None:
        self._entries.clear()
        self._generation += 1

    async def lookup(
        self,
        addresses: Sequence[str],
        find: Callable[[], Awaitable[store_recipients.Recipient | None]],
    ) -> store_recipients.Recipient | None:
        """What `find()` answers for `addresses`, or a recent answer to the same question."""
        key = tuple(address.lower() for address in addresses)
        now = time.monotonic()
        listening = self.watch.listening.is_set()
        kept = self._entries.get(key)
        if listening and kept is not None and kept[0] > now:
            RECIPIENT_LOOKUPS.labels("cache").inc()
            self._entries.move_to_end(key)
            return kept[1]
        generation = self._generation
        found = await find()
        RECIPIENT_LOOKUPS.labels("database").inc()
        if listening and generation == self._generation and not (found and found.counted):
            if key not in self._entries and len(self._entries) >= self._max_entries:
                self._entries.popitem(last=False)  # the least recently used
            self._entries[key] = (now + self._max_age, found)
            self._entries.move_to_end(key)
        return found


async def resolve(
    pool: asyncpg.Pool,
    address: str,
    config: Config,
    cache: CertificateCache,
    recent: RecipientCache | None = None,
) -> Target | Reply:
    """The Target for `address`, or the reply refusing it."""
    settings = config.intake
    addresses = candidates(address, settings.recipient_delimiter)

    async def find() -> store_recipients.Recipient | None:
        async with db.acquire(pool, config.database.connect_timeout) as conn:
            return await store_recipients.find_recipient(conn, addresses)

    try:
        found = await (find() if recent is None else recent.lookup(addresses, find))
    except StoreError:
        return replies.UNKNOWN_RECIPIENT
    except db.DATABASE_ERRORS:  # 451 4.3.0
        return replies.TEMPORARY_FAILURE
    if found is None:
        return replies.UNKNOWN_RECIPIENT
    vaultbox = found.vaultbox
    if not vaultbox.active:
        return replies.MAILBOX_DISABLED
    if _over_quota(vaultbox.limits, found):
        return replies.OVER_QUOTA
    keys = recipient_keys(found, config, cache)
    if not keys:
        return (
            replies.NO_CERTIFICATE_REJECT
            if settings.missing_certificate == "reject"
            else replies.NO_CERTIFICATE_TEMPFAIL
        )
    return Target(address=address, vaultbox=vaultbox, keys=keys)


def recipient_keys(
    found: store_recipients.Recipient, config: Config, cache: CertificateCache
) -> encryption.Keys:
    """What mail to `found`'s vaultbox is encrypted with (delivery, and IMAP APPEND): its
    usable certificates and OpenPGP keys, parsed once per process in `cache`, as its
    preference and limits choose."""
    vaultbox = found.vaultbox
    mismatch = config.smime.allow_address_mismatch
    certificates = cache.usable(
        found.certificates, vaultbox.address, allow_address_mismatch=mismatch
    )
    openpgp_keys = cache.openpgp.usable(
        found.openpgp_keys, vaultbox.address, allow_address_mismatch=mismatch
    )
    return encryption.choose(
        certificates, openpgp_keys, found.key_preference, vaultbox.limits, config.smime
    )


def _over_quota(limits: dict[str, Any], used: store_recipients.Recipient) -> bool:
    max_messages = vaultboxes.limit(limits, "max_messages")
    max_bytes = vaultboxes.limit(limits, "max_bytes")
    return (max_messages is not None and used.messages >= max_messages) or (
        max_bytes is not None and used.bytes >= max_bytes
    )
