"""`encrypt_message`: a complete RFC 5322 message in, the PGP/MIME message to store out.

The stored message is RFC 3156 section 4: `multipart/encrypted;
protocol="application/pgp-encrypted"` with the version part and the ASCII-armoured OpenPGP
message, whose plaintext is the original message's protected header (RFC 9788, the same as
for S/MIME, `encimap.mime.protect`) and canonical body.
"""

from __future__ import annotations

import base64
import io
import secrets
from collections.abc import Iterable

import pysequoia

from encimap import mime
from encimap.mime import CRLF, EncryptionResult
from encimap.openpgp.armor import write_armored
from encimap.openpgp.errors import NoUsableKey, OpenPGPError, reason
from encimap.openpgp.keys import key_algorithm, key_packets, load_key, pkesk_key_ids

PREAMBLE = b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)"


def encrypt_message(
    raw: bytes,
    keys: Iterable[pysequoia.Cert | bytes | str],
    *,
    hide_subject: bool = True,
) -> EncryptionResult:
    """Encrypt `raw` to every valid encryption subkey of every key, as PGP/MIME with RFC 9788
    header protection. Already encrypted mail (S/MIME, PGP/MIME, inline OpenPGP) is returned
    unchanged. Raises NoUsableKey without keys and OpenPGPError when encryption fails.
    CPU-bound: run large messages in a worker thread.
    """
    message = mime.parse_message(raw)
    if mime.is_encrypted(message):
        return EncryptionResult(message=raw, already_encrypted=True)
    certs = [key if isinstance(key, pysequoia.Cert) else load_key(key) for key in keys]
    if not certs:
        raise NoUsableKey("no OpenPGP key to encrypt to")
    protected = mime.protect(message, hide_subject=hide_subject)
    plaintext = b"".join(protected.plaintext.pieces)
    sealed = _encrypt(plaintext, certs)
    del plaintext
    algorithms = _subkey_algorithms(certs, sealed)
    boundary = b"=_encimap_" + secrets.token_hex(12).encode("ascii")
    out = io.BytesIO()
    out.writelines(field.raw for field in protected.outer)
    out.write(pgp_mime_header(boundary))
    write_armored(sealed, out)
    del sealed
    out.write(CRLF + b"--" + boundary + b"--" + CRLF)
    subject = protected.subject
    subject_encrypted = None
    if subject is not None:
        subject_encrypted = base64.b64encode(_encrypt(subject.value, certs)).decode("ascii")
    return EncryptionResult(
        message=out.getvalue(),
        subject_encrypted=subject_encrypted,
        algorithm="openpgp/" + "+".join(sorted(algorithms)),
        recipient_fingerprints=tuple(cert.fingerprint.upper() for cert in certs),
    )


def pgp_mime_header(boundary: bytes) -> bytes:
    """MIME fields, preamble, version part and the encrypted part's header (RFC 3156 4)."""
    delimiter = b"--" + boundary + CRLF
    return (
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n'
        b' boundary="' + boundary + b'"\r\n'
        b"\r\n" + PREAMBLE + CRLF + delimiter + b"Content-Type: application/pgp-encrypted\r\n"
        b"Content-Description: PGP/MIME version identification\r\n"
        b"\r\n"
        b"Version: 1\r\n"
        b"\r\n" + delimiter + b'Content-Type: application/octet-stream; name="encrypted.asc"\r\n'
        b"Content-Description: OpenPGP encrypted message\r\n"
        b'Content-Disposition: inline; filename="encrypted.asc"\r\n'
        b"\r\n"
    )


def _encrypt(data: bytes, certs: list[pysequoia.Cert]) -> bytes:
    """A binary OpenPGP message of `data` to every valid encryption subkey of `certs`."""
    try:
        return pysequoia.encrypt(data, certs, armor=False)
    except Exception as exc:  # the binding raises plain exceptions with a Rust backtrace
        raise OpenPGPError(f"OpenPGP encryption failed: {reason(exc)}") from None


def _subkey_algorithms(certs: list[pysequoia.Cert], sealed: bytes) -> set[str]:
    """Algorithms of the subkeys `sealed` was encrypted to, from its leading PKESK packets."""
    used = set(pkesk_key_ids(sealed))
    return {
        key_algorithm(packet)
        for cert in certs
        for packet in key_packets(cert)
        if packet.key_id in used
    }
