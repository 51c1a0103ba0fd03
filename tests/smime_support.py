"""Helpers for the S/MIME tests: throwaway certificates and independent decryption.

Decryption never goes through encimap: the openssl command (or cryptography's own PKCS#7
decryptor) is the judge of what encimap produced.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = dt.timedelta(days=1)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

KEY_MAKERS = {
    # Deliberately weak: the checks must refuse it.
    "rsa-1024": lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),  # noqa: S505
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ec-p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    # A signing-only key type: the checks must refuse it for encryption.
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


@dataclass(frozen=True)
class Identity:
    """A certificate with its private key, also written to files for openssl."""

    certificate: x509.Certificate
    key: PrivateKey
    cert_path: Path
    key_path: Path

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def make_identity(
    directory: Path,
    address: str = "box@example.org",
    *,
    key: PrivateKey | str = "rsa-2048",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key_usage: x509.KeyUsage | None = None,
    extended_key_usage: list[x509.ObjectIdentifier] | None = None,
    san: bool = True,
) -> Identity:
    """Self-signed certificate; by default a valid S/MIME encryption certificate."""
    private_key = KEY_MAKERS[key]() if isinstance(key, str) else key
    now = dt.datetime.now(dt.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, address),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, address),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - DAY)
        .not_valid_after(not_after or now + 30 * DAY)
        .add_extension(key_usage or default_usage(private_key), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(extended_key_usage or [ExtendedKeyUsageOID.EMAIL_PROTECTION]),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(address)]), critical=False
        )
    # Ed25519 signs with its own hash (cryptography wants None there).
    digest = None if isinstance(private_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    certificate = builder.sign(private_key, digest)
    stem = f"{address}-{certificate.serial_number:x}"
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(pem_key(private_key))
    return Identity(certificate, private_key, cert_path, key_path)


def default_usage(private_key: PrivateKey) -> x509.KeyUsage:
    """What an encryption certificate of this key type carries."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        return usage(encipherment=True)
    return usage(agreement=True)


def usage(*, encipherment: bool = False, agreement: bool = False) -> x509.KeyUsage:
    """KeyUsage with digitalSignature and the chosen encryption bits."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=encipherment,
        data_encipherment=False,
        key_agreement=agreement,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def pem_key(private_key: PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def openssl_decrypt_files(
    data: bytes, cert_path: Path, key_path: Path, *options: str, command: str = "cms"
) -> bytes:
    """Decrypt with `openssl cms -decrypt` (or `openssl smime`) and the key in `key_path`."""
    result = subprocess.run(
        ["openssl", command, "-decrypt", *options,
         "-recip", str(cert_path), "-inkey", str(key_path)],
        input=data,
        capture_output=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"openssl {command} -decrypt failed: {result.stderr.decode()}")
    return result.stdout


def openssl_decrypt(message: bytes, identity: Identity, *, command: str = "cms") -> bytes:
    """Decrypt a stored S/MIME message with `openssl cms` (or `openssl smime`)."""
    return openssl_decrypt_files(message, identity.cert_path, identity.key_path, command=command)


def openssl_decrypt_der(der: bytes, identity: Identity) -> bytes:
    """Decrypt a DER CMS structure (such as subject_encrypted) with `openssl cms`."""
    return openssl_decrypt_files(der, identity.cert_path, identity.key_path, "-inform", "DER")


def crlf(data: bytes) -> bytes:
    """Reference canonicalisation, written independently of encimap's."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def split_entity(entity: bytes) -> tuple[bytes, bytes]:
    """(header block with its final CRLF, body) of a CRLF entity."""
    header, separator, body = entity.partition(b"\r\n\r\n")
    assert separator, "no empty line after the header"
    return header + b"\r\n", body


def outer_headers(message: bytes) -> dict[str, list[str]]:
    """Outer header fields by lower-case name (values unfolded)."""
    header, _ = split_entity(message)
    fields: dict[str, list[str]] = {}
    for field in re.split(rb"\r\n(?![ \t])", header.rstrip(b"\r\n")):
        name, _, value = field.partition(b":")
        unfolded = value.replace(b"\r\n", b"").strip().decode("utf-8", "replace")
        fields.setdefault(name.decode().lower(), []).append(unfolded)
    return fields
