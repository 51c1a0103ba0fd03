"""Vaultbox certificates. Services that encrypt read only `public_certificates`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from encimap import smime
from encimap.smime import CertificateInfo
from encimap.smime.certificates import PrivateKey
from encimap.store.errors import Conflict
from encimap.store.types import Executor

CertificateType = Literal["public", "private"]


@dataclass(frozen=True)
class StoredCertificate:
    id: uuid.UUID
    vaultbox_id: uuid.UUID
    pem_content: str
    fingerprint_sha256: str | None
    key_algorithm: str | None
    not_before: datetime | None
    not_after: datetime | None


async def add_certificate(
    db: Executor,
    *,
    vaultbox_id: uuid.UUID,
    certificate_type: CertificateType,
    pem_content: str,
    info: CertificateInfo,
) -> uuid.UUID:
    """Store a certificate that `smime.check_certificate` described as `info`."""
    try:
        return await db.fetchval(
            """INSERT INTO certificates (vaultbox_id, certificate_type, pem_content,
                                         fingerprint_sha256, subject, key_algorithm,
                                         not_before, not_after)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id""",
            vaultbox_id,
            certificate_type,
            pem_content,
            info.fingerprint_sha256,
            info.subject,
            info.key_algorithm,
            info.not_before,
            info.not_after,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"certificate {info.fingerprint_sha256} is already stored") from None


async def add_generated_certificate(
    db: Executor, *, vaultbox_id: uuid.UUID, address: str, ec: bool = False
) -> tuple[bytes, PrivateKey, CertificateInfo]:
    """Generate a keypair for `address`, check it and store only its public certificate.

    Returns (certificate PEM, private key, info); the key goes to the caller alone (for a
    PKCS#12 file, or a test's decryption), never into the database from here.
    """
    cert_pem, key = smime.generate_certificate(address, ec=ec)
    info = smime.check_certificate(cert_pem, address)
    await add_certificate(
        db,
        vaultbox_id=vaultbox_id,
        certificate_type="public",
        pem_content=cert_pem.decode(),
        info=info,
    )
    return cert_pem, key, info


async def public_certificates(db: Executor, vaultbox_id: uuid.UUID) -> list[StoredCertificate]:
    """Active public certificates of a vaultbox, newest first (validity is the caller's check)."""
    rows = await db.fetch(
        """SELECT id, vaultbox_id, pem_content, fingerprint_sha256, key_algorithm,
                  not_before, not_after
             FROM public_certificates WHERE vaultbox_id = $1 ORDER BY created_at DESC""",
        vaultbox_id,
    )
    return [StoredCertificate(**dict(row)) for row in rows]
