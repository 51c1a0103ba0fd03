"""Recipient certificates: loading, the checks before use, generation and PKCS#12 export.

The server only ever holds public certificates; `generate_certificate` hands the private key
to the caller, who exports it (PKCS#12) for the mail client and then forgets it.
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec as ecc
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from encimap.smime.errors import CertificateError
from encimap.smime.legacy import gpgsm_derives_right

CertificateInput = x509.Certificate | bytes | str
PrivateKey = rsa.RSAPrivateKey | ecc.EllipticCurvePrivateKey

MIN_RSA_BITS = 2048
GENERATED_RSA_BITS = 3072
DEFAULT_VALIDITY_DAYS = 730
PKCS12_KDF_ROUNDS = 100_000
LEGACY_ATTEMPTS = 32  # each try fails with p ~ 1/64 (two bags): 32 in a row never happen
# Curves with a CMS ECDH profile in RFC 5753 that mail clients implement.
SUPPORTED_CURVES: dict[str, str] = {"secp256r1": "p256", "secp384r1": "p384"}


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What a checked certificate tells the store and the operator."""

    fingerprint_sha256: str
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    key_algorithm: str
    email_addresses: tuple[str, ...]


def load_certificate(data: CertificateInput) -> x509.Certificate:
    """Parse a PEM or DER certificate; raise CertificateError if it is neither."""
    if isinstance(data, x509.Certificate):
        return data
    raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    try:
        if b"-----BEGIN" in raw:
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise CertificateError(f"certificate cannot be parsed: {exc}") from None


# How many certificates keep what encryption derives from them (fingerprint, public key,
# recipient identifier): as many as the intake keeps parsed (`intake.recipient_cache_size`'s
# default), so delivery round-robin to thousands of vaultboxes does not derive them again for
# every message (an LRU smaller than the working set misses every time).
PREPARED_CERTIFICATES = 16_384


@functools.lru_cache(maxsize=PREPARED_CERTIFICATES)  # every encryption names its recipients
def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 fingerprint of the DER certificate, lower-case hex without separators."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def key_algorithm(certificate: x509.Certificate) -> str:
    """Name the public key ("rsa-3072", "ec-p256"); raise CertificateError if we cannot use it."""
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CertificateError(
                f"RSA key of {key.key_size} bits is too weak (at least {MIN_RSA_BITS} required)"
            )
        return f"rsa-{key.key_size}"
    if isinstance(key, ecc.EllipticCurvePublicKey):
        curve = SUPPORTED_CURVES.get(key.curve.name)
        if curve is None:
            raise CertificateError(
                f"EC curve {key.curve.name} is not supported (use P-256 or P-384)"
            )
        return f"ec-{curve}"
    raise CertificateError(f"key type {type(key).__name__} cannot encrypt mail (use RSA or EC)")


def email_addresses(certificate: x509.Certificate) -> tuple[str, ...]:
    """The rfc822Name entries of the SubjectAltName, else the subject's emailAddress."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.RFC822Name)
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [
            str(attribute.value)
            for attribute in certificate.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
        ]
    return tuple(names)


def check_certificate(
    data: CertificateInput,
    address: str,
    *,
    now: dt.datetime | None = None,
    allow_address_mismatch: bool = False,
) -> CertificateInfo:
    """Check that mail to `address` may be encrypted to this certificate.

    `now` (timezone-aware, default the current time) is the moment the validity is checked at.
    Raises CertificateError naming the first problem: unparsable, outside its validity period,
    unsupported or weak key, a KeyUsage or ExtendedKeyUsage that forbids mail encryption, or
    an email address that is not `address` (case-insensitive) unless the mismatch is allowed.
    """
    certificate = load_certificate(data)
    _check_validity(certificate, now or dt.datetime.now(dt.UTC))
    algorithm = key_algorithm(certificate)
    _check_key_usage(certificate)
    _check_extended_key_usage(certificate)
    info = describe_certificate(certificate, algorithm)
    if not allow_address_mismatch:
        _check_address(info.email_addresses, address)
    return info


def describe_certificate(data: CertificateInput, algorithm: str | None = None) -> CertificateInfo:
    """What the store keeps about a certificate, without judging it (no validity or address
    check). Raises CertificateError if it cannot be parsed or its key cannot encrypt mail."""
    certificate = load_certificate(data)
    return CertificateInfo(
        fingerprint_sha256=fingerprint(certificate),
        subject=certificate.subject.rfc4514_string(),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        key_algorithm=algorithm or key_algorithm(certificate),
        email_addresses=email_addresses(certificate),
    )


def usable_certificates(
    certificates: Iterable[CertificateInput],
    address: str,
    *,
    now: dt.datetime | None = None,
    allow_address_mismatch: bool = False,
) -> list[x509.Certificate]:
    """Those of `certificates` that pass `check_certificate` for `address`, in order."""
    usable = []
    for data in certificates:
        try:
            certificate = load_certificate(data)
            check_certificate(
                certificate, address, now=now, allow_address_mismatch=allow_address_mismatch
            )
        except CertificateError:
            continue
        usable.append(certificate)
    return usable


def _check_validity(certificate: x509.Certificate, now: dt.datetime) -> None:
    if now < certificate.not_valid_before_utc:
        raise CertificateError(
            f"certificate is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M}Z"
        )
    if now > certificate.not_valid_after_utc:
        raise CertificateError(
            f"certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
        )


def _check_key_usage(certificate: x509.Certificate) -> None:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if isinstance(certificate.public_key(), rsa.RSAPublicKey):
        if not usage.key_encipherment:
            raise CertificateError("key usage does not allow keyEncipherment (needed for RSA)")
    elif not usage.key_agreement:
        raise CertificateError("key usage does not allow keyAgreement (needed for EC)")


def _check_extended_key_usage(certificate: x509.Certificate) -> None:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    allowed = {ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
    if not allowed.intersection(usages):
        raise CertificateError("extended key usage does not include emailProtection")


def _check_address(addresses: tuple[str, ...], address: str) -> None:
    if not addresses:
        raise CertificateError(f"certificate carries no email address (expected {address})")
    wanted = address.casefold()
    if all(candidate.casefold() != wanted for candidate in addresses):
        raise CertificateError(f"certificate is for {', '.join(addresses)}, not for {address}")


def generate_certificate(
    address: str, *, ec: bool = False, days: int = DEFAULT_VALIDITY_DAYS
) -> tuple[bytes, PrivateKey]:
    """Create a self-signed S/MIME certificate for `address` and return (PEM, private key).

    RSA-3072 by default, EC P-256 with `ec=True`. The key usage is the one our own checks
    and mail clients expect for an encryption certificate of that key type.
    """
    key: PrivateKey
    if ec:
        key = ecc.generate_private_key(ecc.SECP256R1())
        usage = _key_usage(key_encipherment=False, key_agreement=True)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=GENERATED_RSA_BITS)
        usage = _key_usage(key_encipherment=True, key_agreement=False)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, address),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, address),
        ]
    )
    email_protection = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(127) | 1)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(email_protection, critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(address)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key


def _key_usage(*, key_encipherment: bool, key_agreement: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def export_pkcs12(
    certificate_pem: bytes,
    private_key: PrivateKey,
    password: bytes,
    friendly_name: str,
    *,
    legacy: bool = False,
) -> bytes:
    """Bundle certificate and key as PKCS#12 for a mail client.

    PBES2 with AES-256-CBC and PBKDF2-SHA256, MAC over SHA-256: read by OpenSSL 3, Thunderbird
    (NSS), Outlook, Apple Mail and iOS. `legacy`: PBE-SHA1-3DES bags and a SHA-1 MAC, for
    importers that refuse PBES2 (gpgsm 2.2: `encryptedData error at "pkcs5PBES2-params"`),
    made again with new salts while gpgsm 2.2 would derive a wrong key (`smime.legacy`).
    """
    builder = serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(PKCS12_KDF_ROUNDS)
    if legacy:
        builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(
            hashes.SHA1()  # noqa: S303 - what legacy importers read; the password protects it
        )
    else:
        builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(
            hashes.SHA256()
        )
    encryption = builder.build(password)
    for _ in range(LEGACY_ATTEMPTS):
        bundle = pkcs12.serialize_key_and_certificates(
            friendly_name.encode("utf-8"),
            private_key,
            load_certificate(certificate_pem),
            None,
            encryption,
        )
        # New salts on every call; a legacy file is kept only if gpgsm 2.2 can decrypt it.
        if not legacy or gpgsm_derives_right(bundle, password):
            return bundle
    raise CertificateError("could not make a legacy PKCS#12 file gpgsm can read")
