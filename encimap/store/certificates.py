"""Vaultbox certificates. Services that encrypt read only `public_certificates`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from encimap import smime
from encimap.logs import get_logger
from encimap.smime import CertificateError, CertificateInfo
from encimap.smime.certificates import PrivateKey, describe_certificate
from encimap.store.errors import Conflict
from encimap.store.types import Executor

log = get_logger(__name__)

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
    """Store a certificate that `smime.check_certificate` described as `info`.

    The platform's table has no uniqueness on certificates (its rows predate encimap), so the
    same certificate twice for one vaultbox is refused here."""
    certificate_id = await db.fetchval(
        """INSERT INTO certificates (vaultbox_id, certificate_type, pem_content,
                                     fingerprint_sha256, subject, key_algorithm,
                                     not_before, not_after)
           SELECT $1, $2::text, $3, $4::text, $5, $6, $7, $8
            WHERE NOT EXISTS (SELECT 1 FROM certificates
                               WHERE vaultbox_id = $1 AND certificate_type = $2::text
                                 AND fingerprint_sha256 = $4::text)
           RETURNING id""",
        vaultbox_id,
        certificate_type,
        pem_content,
        info.fingerprint_sha256,
        info.subject,
        info.key_algorithm,
        info.not_before,
        info.not_after,
    )
    if certificate_id is None:
        raise Conflict(f"certificate {info.fingerprint_sha256} is already stored")
    return certificate_id


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


async def complete_certificates(db: Executor) -> int:
    """Derive fingerprint, subject, validity and key type for public certificates stored with
    only their PEM (the platform's way); returns how many were completed. A PEM that cannot be
    parsed, or whose key cannot encrypt, stays as it is: RCPT then finds no usable certificate.
    """
    rows = await db.fetch(
        "SELECT id, pem_content FROM public_certificates WHERE fingerprint_sha256 IS NULL"
    )
    completed = 0
    for row in rows:
        try:
            info = describe_certificate(row["pem_content"])
        except CertificateError as exc:
            log.warning("certificate.unusable", certificate_id=str(row["id"]), error=str(exc))
            continue
        await db.execute(
            """UPDATE public_certificates
                  SET fingerprint_sha256 = $2, subject = $3, key_algorithm = $4,
                      not_before = $5, not_after = $6
                WHERE id = $1 AND fingerprint_sha256 IS NULL""",
            row["id"],
            info.fingerprint_sha256,
            info.subject,
            info.key_algorithm,
            info.not_before,
            info.not_after,
        )
        completed += 1
    return completed


async def count_private(db: Executor, vaultbox_id: uuid.UUID | None = None) -> int:
    """Server-held private key rows (the platform's old service made them), of one vaultbox
    or of all."""
    return await db.fetchval(
        """SELECT count(*) FROM certificates
            WHERE certificate_type = 'private' AND ($1::uuid IS NULL OR vaultbox_id = $1)""",
        vaultbox_id,
    )


async def purge_private(db: Executor, vaultbox_id: uuid.UUID | None = None) -> int:
    """Delete the server-held private key rows (of one vaultbox or of all); how many."""
    status = await db.execute(
        """DELETE FROM certificates
            WHERE certificate_type = 'private' AND ($1::uuid IS NULL OR vaultbox_id = $1)""",
        vaultbox_id,
    )
    return int(status.split()[-1])
