"""Certificate checks, generation and PKCS#12 export."""

from __future__ import annotations

import datetime as dt
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from encimap.smime import (
    CertificateError,
    check_certificate,
    encrypt_message,
    export_pkcs12,
    generate_certificate,
    usable_certificates,
)
from tests.smime_support import DAY, Identity, make_identity, openssl_decrypt, usage

ADDRESS = "box@example.org"
NOW = dt.datetime.now(dt.UTC)
MESSAGE = b"From: a@example.net\r\nTo: box@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("certificates")


@pytest.fixture(scope="module")
def rsa_identity(keydir) -> Identity:
    return make_identity(keydir, ADDRESS)


@pytest.fixture(scope="module")
def ec_identity(keydir) -> Identity:
    return make_identity(keydir, ADDRESS, key="ec-p384")


@pytest.fixture(scope="module")
def generated(keydir):
    """One RSA-3072 and one EC certificate from generate_certificate (keygen is slow)."""
    return {
        "rsa": generate_certificate(ADDRESS),
        "ec": generate_certificate(ADDRESS, ec=True),
    }


def test_valid_rsa_certificate_is_described(rsa_identity: Identity) -> None:
    info = check_certificate(rsa_identity.pem, "BOX@Example.ORG")
    assert info.key_algorithm == "rsa-2048"
    assert info.email_addresses == (ADDRESS,)
    assert info.fingerprint_sha256 == rsa_identity.certificate.fingerprint(hashes.SHA256()).hex()
    assert info.subject == f"1.2.840.113549.1.9.1={ADDRESS},CN={ADDRESS}"
    assert info.not_before < dt.datetime.now(dt.UTC) < info.not_after


def test_der_and_ec_certificates_are_accepted(ec_identity: Identity) -> None:
    der = ec_identity.certificate.public_bytes(serialization.Encoding.DER)
    assert check_certificate(der, ADDRESS).key_algorithm == "ec-p384"


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"not_after": NOW - DAY, "not_before": NOW - 9 * DAY}, "expired"),
        ({"not_before": NOW + DAY}, "not valid before"),
        ({"key": "rsa-1024"}, "RSA key of 1024 bits is too weak"),
        ({"key": "ec-p521"}, "EC curve secp521r1 is not supported"),
        ({"key_usage": usage()}, "does not allow keyEncipherment"),
        ({"key": "ec-p256", "key_usage": usage(encipherment=True)}, "does not allow keyAgreement"),
        ({"extended_key_usage": [ExtendedKeyUsageOID.SERVER_AUTH]}, "emailProtection"),
    ],
    ids=["expired", "not-yet-valid", "rsa-1024", "p521", "rsa-usage", "ec-usage", "eku"],
)
def test_unusable_certificates_are_refused_with_a_reason(
    tmp_path, options: dict, reason: str
) -> None:
    identity = make_identity(tmp_path, ADDRESS, **options)
    with pytest.raises(CertificateError, match=reason):
        check_certificate(identity.pem, ADDRESS)
    assert usable_certificates([identity.pem], ADDRESS) == []


def test_any_extended_key_usage_is_enough(tmp_path) -> None:
    identity = make_identity(
        tmp_path, ADDRESS, extended_key_usage=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]
    )
    check_certificate(identity.pem, ADDRESS)


def test_address_must_match_unless_allowed(rsa_identity: Identity) -> None:
    with pytest.raises(CertificateError, match=f"certificate is for {ADDRESS}, not for x@y.org"):
        check_certificate(rsa_identity.pem, "x@y.org")
    info = check_certificate(rsa_identity.pem, "x@y.org", allow_address_mismatch=True)
    assert info.email_addresses == (ADDRESS,)


def test_subject_email_address_is_the_fallback_without_san(tmp_path) -> None:
    identity = make_identity(tmp_path, ADDRESS, san=False)
    assert check_certificate(identity.pem, ADDRESS).email_addresses == (ADDRESS,)


def test_checks_use_the_given_time(rsa_identity: Identity) -> None:
    later = dt.datetime.now(dt.UTC) + 365 * DAY
    with pytest.raises(CertificateError, match="expired"):
        check_certificate(rsa_identity.pem, ADDRESS, now=later)


def test_garbage_and_foreign_key_types_are_refused(tmp_path) -> None:
    with pytest.raises(CertificateError, match="cannot be parsed"):
        check_certificate(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----", ADDRESS)
    certificate = make_identity(tmp_path, ADDRESS, key="ed25519").certificate
    with pytest.raises(CertificateError, match="cannot encrypt mail"):
        check_certificate(certificate, ADDRESS)


def test_usable_certificates_keeps_the_good_ones_in_order(tmp_path, rsa_identity) -> None:
    weak = make_identity(tmp_path, ADDRESS, key="rsa-1024")
    other = make_identity(tmp_path, ADDRESS, key="ec-p256")
    usable = usable_certificates([rsa_identity.pem, weak.pem, other.pem], ADDRESS)
    assert usable == [rsa_identity.certificate, other.certificate]


@pytest.mark.parametrize(("kind", "algorithm"), [("rsa", "rsa-3072"), ("ec", "ec-p256")])
def test_generated_certificates_pass_our_checks(generated, kind: str, algorithm: str) -> None:
    pem, key = generated[kind]
    info = check_certificate(pem, ADDRESS)
    assert info.key_algorithm == algorithm
    certificate = x509.load_pem_x509_certificate(pem)
    assert certificate.public_key() == key.public_key()
    assert certificate.extensions.get_extension_for_class(x509.KeyUsage).critical
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    if kind == "rsa":
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_pkcs12_opens_with_openssl_and_its_key_decrypts_mail(
    generated, tmp_path, kind: str
) -> None:
    pem, key = generated[kind]
    bundle = tmp_path / "box.p12"
    bundle.write_bytes(export_pkcs12(pem, key, b"s3cret pass", "box@example.org"))
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    for path, option in ((key_path, "-nocerts"), (cert_path, "-nokeys")):
        subprocess.run(
            [
                "openssl",
                "pkcs12",
                "-in",
                str(bundle),
                "-passin",
                "pass:s3cret pass",
                option,
                "-nodes",
                "-out",
                str(path),
            ],
            check=True,
            capture_output=True,
        )
    info = subprocess.run(
        ["openssl", "pkcs12", "-in", str(bundle), "-passin", "pass:s3cret pass", "-info", "-noout"],
        check=True,
        capture_output=True,
        text=True,
    ).stderr
    assert "AES-256-CBC" in info and "sha256" in info.lower()
    certificate = x509.load_pem_x509_certificate(pem)
    assert x509.load_pem_x509_certificate(cert_path.read_bytes()) == certificate
    identity = Identity(certificate, key, cert_path, key_path)
    stored = encrypt_message(MESSAGE, [pem]).message
    assert openssl_decrypt(stored, identity).endswith(b"\r\n\r\nhello\r\n")


def test_pkcs12_with_a_wrong_password_does_not_open(generated, tmp_path) -> None:
    pem, key = generated["ec"]
    bundle = tmp_path / "box.p12"
    bundle.write_bytes(export_pkcs12(pem, key, b"right", "box"))
    result = subprocess.run(
        ["openssl", "pkcs12", "-in", str(bundle), "-passin", "pass:wrong", "-noout"],
        capture_output=True,
        check=False,
    )
    assert result.returncode != 0
