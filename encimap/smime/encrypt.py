"""`encrypt_message`: a complete RFC 5322 message in, the complete message to store out."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable

from encimap import mime
from encimap.mime import EncryptionResult
from encimap.smime import cms
from encimap.smime.certificates import CertificateInput, fingerprint, load_certificate


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
    protected = mime.protect(message, hide_subject=hide_subject)
    key = cms.content_key(recipients, profile)
    envelope = key.envelope(protected.plaintext.pieces, protected.plaintext.length)
    out = io.BytesIO()
    out.writelines(field.raw for field in protected.outer)
    out.write(smime_header(envelope.smime_type))
    out.write(mime.CRLF)
    mime.write_base64(envelope.chunks, out)
    subject = protected.subject
    subject_encrypted = (
        None if subject is None else base64.b64encode(key.der(subject.value)).decode("ascii")
    )
    return EncryptionResult(
        message=out.getvalue(),
        subject_encrypted=subject_encrypted,
        algorithm=envelope.algorithm,
        recipient_fingerprints=tuple(fingerprint(certificate) for certificate in recipients),
    )


def smime_header(smime_type: str) -> bytes:
    """The MIME fields of the outer message (RFC 8551 section 3.2)."""
    return (
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: application/pkcs7-mime; smime-type="
        + smime_type.encode("ascii")
        + b'; name="smime.p7m"\r\n'
        b'Content-Disposition: attachment; filename="smime.p7m"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
    )
