"""Legacy PKCS#12 and gpgsm 2.2's key derivation: a file whose salt hits gpgsm's bug is refused
by gpgsm with the right password, and `export_pkcs12(legacy=True)` never returns such a file."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from encimap import smime
from encimap.smime.legacy import gpgsm_derives_right

PASSWORD = b"p12-pw"
pytestmark = pytest.mark.skipif(shutil.which("gpgsm") is None, reason="gpgsm is not installed")


def gpgsm_imports(bundle: bytes) -> bool:
    home = Path(tempfile.mkdtemp(prefix="gpgsm-"))  # short: gpg-agent's socket path
    try:
        home.chmod(0o700)
        (home / "key.p12").write_bytes(bundle)
        done = subprocess.run(
            ["gpgsm", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
             "--passphrase-fd", "0", "--import", str(home / "key.p12")],
            input=PASSWORD + b"\n", capture_output=True, check=False, timeout=60,
        )  # fmt: skip
        return b"secret keys imported: 1" in done.stderr
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def raw_legacy_bundles():
    """cryptography's legacy PKCS#12 of one RSA key (gpgsm 2.2 imports no EC key from
    PKCS#12), new salts each time (few KDF rounds: fast)."""
    pem, key = smime.generate_certificate("legacy@vault.test")
    certificate = smime.load_certificate(pem)
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2048)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())  # noqa: S303 - the legacy format under test
        .build(PASSWORD)
    )
    while True:
        yield pkcs12.serialize_key_and_certificates(b"x", key, certificate, None, encryption)


def test_the_check_predicts_what_gpgsm_refuses() -> None:
    bundles = raw_legacy_bundles()
    hit = next(
        b
        for _, b in zip(range(3000), bundles, strict=False)
        if not gpgsm_derives_right(b, PASSWORD)
    )
    missed = next(b for b in bundles if gpgsm_derives_right(b, PASSWORD))
    assert not gpgsm_imports(hit)
    assert gpgsm_imports(missed)


def test_legacy_export_is_always_one_gpgsm_reads() -> None:
    pem, key = smime.generate_certificate("legacy@vault.test", ec=True)
    for _ in range(20):
        bundle = smime.export_pkcs12(pem, key, PASSWORD, "legacy@vault.test", legacy=True)
        assert gpgsm_derives_right(bundle, PASSWORD)
