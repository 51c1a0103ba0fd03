"""`encrypt_message`: a complete RFC 5322 message in, the complete message to store out."""

from __future__ import annotations

import base64
import io
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from encimap.smime import cms, mime
from encimap.smime.certificates import CertificateInput, fingerprint, load_certificate


@dataclass(frozen=True, slots=True)
class EncryptionResult:
    """What the store keeps for one delivered message.

    `message` is the stored RFC 5322 message (outer headers + S/MIME body, CRLF line endings),
    or the input unchanged when `already_encrypted`. `subject_encrypted` is the original
    Subject value (unfolded, still RFC 2047-encoded if it was) encrypted on its own to the same
    certificates with the same profile, as base64 DER CMS; None without a Subject or when the
    message was already encrypted. `algorithm` names content and key management, such as
    "aes256-cbc/rsa" or "aes256-gcm/ecdh+rsa-oaep"; None when already encrypted.
    """

    message: bytes
    already_encrypted: bool = False
    subject_encrypted: str | None = None
    algorithm: str | None = None
    recipient_fingerprints: tuple[str, ...] = ()


def encrypt_message(
    raw: bytes,
    certificates: Iterable[CertificateInput],
    profile: cms.Profile | str = cms.Profile.AES256_CBC,
    *,
    hide_subject: bool = True,
) -> EncryptionResult:
    """Encrypt `raw` to every certificate in one S/MIME envelope with RFC 9788 header protection.

    Already encrypted mail (S/MIME enveloped or auth-enveloped data, multipart/encrypted) is
    returned unchanged. Raises NoUsableCertificate without certificates and CertificateError for
    a key that cannot be used; check certificates first with `check_certificate`. CPU-bound
    and thread-safe: call it in a worker thread for large messages.
    """
    message = mime.parse_message(raw)
    if mime.is_encrypted(message):
        return EncryptionResult(message=raw, already_encrypted=True)
    recipients = [load_certificate(certificate) for certificate in certificates]
    outer = mime.outer_fields(message, hide_subject=hide_subject)
    inner_header = mime.protected_header(message, outer)
    body = mime.canonical_body(message)
    key = cms.content_key(recipients, profile)
    envelope = key.envelope(
        itertools.chain([inner_header], body.pieces), len(inner_header) + body.length
    )
    out = io.BytesIO()
    out.writelines(field.raw for field in outer)
    out.write(mime.smime_header(envelope.smime_type))
    out.write(mime.CRLF)
    mime.write_base64(envelope.chunks, out)
    subject = message.first(b"subject")
    subject_encrypted = (
        None if subject is None else base64.b64encode(key.der(subject.value)).decode("ascii")
    )
    return EncryptionResult(
        message=out.getvalue(),
        subject_encrypted=subject_encrypted,
        algorithm=envelope.algorithm,
        recipient_fingerprints=tuple(fingerprint(certificate) for certificate in recipients),
    )
