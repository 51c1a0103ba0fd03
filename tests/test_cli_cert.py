"""`encimap cert generate|import` as a user runs them, checked with the openssl command."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from encimap import smime
from encimap.store import certificates
from tests.support import Databases, make_vaultbox, run_cli, write_config_file


@pytest.fixture(scope="module")
def config_file(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Path:
    asyncio.run(make_vaultbox(databases, "certs@vault.test"))
    asyncio.run(make_vaultbox(databases, "imports@vault.test"))
    return write_config_file(tmp_path_factory.mktemp("cfg") / "encimap.toml", databases)


async def stored(databases: Databases, address: str) -> list:
    conn = await databases.connect()
    try:
        box_id = await conn.fetchval("SELECT id FROM vaultboxes WHERE alias = $1", address)
        rows = await conn.fetch(
            "SELECT certificate_type, pem_content FROM certificates WHERE vaultbox_id = $1",
            box_id,
        )
        return [dict(row) for row in rows], await certificates.public_certificates(conn, box_id)
    finally:
        await conn.close()


def openssl(*args: str, data: bytes = b"") -> bytes:
    result = subprocess.run(["openssl", *args], input=data, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


async def test_generate_p12_decrypts_mail_to_stored_certificate(databases, config_file, tmp_path):
    p12 = tmp_path / "certs.p12"
    result = run_cli(
        "cert", "generate", "certs@vault.test", "--p12", str(p12),
        config_file=config_file, stdin="p12-password\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "password" not in result.stdout.lower()  # it came from stdin: not printed
    rows, public = await stored(databases, "certs")
    assert [row["certificate_type"] for row in rows] == ["public"]
    assert b"PRIVATE KEY" not in rows[0]["pem_content"].encode()

    key = openssl(
        "pkcs12", "-in", str(p12), "-passin", "pass:p12-password", "-nocerts", "-nodes"
    )  # fmt: skip
    key_path = tmp_path / "key.pem"
    key_path.write_bytes(key)
    mail = b"From: a@b.test\r\nSubject: to the generated key\r\n\r\nsecret body\r\n"
    encrypted = smime.encrypt_message(mail, [public[0].pem_content], "aes256-cbc")
    plain = openssl("cms", "-decrypt", "-inkey", str(key_path), data=encrypted.message)
    assert b"secret body" in plain

    again = run_cli(
        "cert", "generate", "certs@vault.test", "--p12", str(p12),
        config_file=config_file, stdin="x\n",
    )  # fmt: skip
    assert again.returncode == 1 and "exists" in again.stderr


async def test_generate_ec_keeping_the_key_encrypted(databases, config_file, tmp_path):
    p12 = tmp_path / "ec.p12"
    result = run_cli(
        "cert", "generate", "imports@vault.test", "--p12", str(p12), "--ec",
        "--keep-private-key", config_file=config_file, stdin="pw-ec\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ec-p256" in result.stdout
    rows, public = await stored(databases, "imports")
    private = [row for row in rows if row["certificate_type"] == "private"]
    assert len(private) == 1
    assert "ENCRYPTED PRIVATE KEY" in private[0]["pem_content"]
    key_pem = private[0]["pem_content"].encode()
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(key_pem, b"not-the-password")
    key = serialization.load_pem_private_key(key_pem, b"pw-ec")
    assert key.public_key() == smime.load_certificate(public[0].pem_content).public_key()


async def test_import_checks_the_certificate(databases, config_file, tmp_path):
    good_pem, _ = smime.generate_certificate("imports@vault.test")
    wrong_pem, _ = smime.generate_certificate("other@else.test")
    (tmp_path / "good.pem").write_bytes(good_pem)
    (tmp_path / "wrong.pem").write_bytes(wrong_pem)
    ok = run_cli(
        "cert", "import", "imports@vault.test", str(tmp_path / "good.pem"),
        config_file=config_file,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    refused = run_cli(
        "cert", "import", "imports@vault.test", str(tmp_path / "wrong.pem"),
        config_file=config_file,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "other@else.test" in refused.stderr and "imports@vault.test" in refused.stderr
    _, public = await stored(databases, "imports")
    fingerprints = {cert.fingerprint_sha256 for cert in public}
    assert smime.check_certificate(good_pem, "imports@vault.test").fingerprint_sha256 in (
        fingerprints
    )
    assert len(public) == 2  # the generated one and the imported one; not the wrong one


async def test_import_takes_der_and_honours_allow_address_mismatch(
    databases, config_file, tmp_path
):
    der = openssl("x509", "-outform", "DER", data=smime.generate_certificate("der@vault.test")[0])
    (tmp_path / "cert.der").write_bytes(der)
    await make_vaultbox(databases, "der@vault.test")
    ok = run_cli("cert", "import", "der@vault.test", str(tmp_path / "cert.der"),
                 config_file=config_file)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    rows, public = await stored(databases, "der")
    assert rows[0]["pem_content"].startswith("-----BEGIN CERTIFICATE-----")  # stored as PEM
    assert openssl("x509", "-outform", "DER", data=rows[0]["pem_content"].encode()) == der

    foreign_pem, _ = smime.generate_certificate("someone@else.test")
    (tmp_path / "foreign.pem").write_bytes(foreign_pem)
    refused = run_cli("cert", "import", "der@vault.test", str(tmp_path / "foreign.pem"),
                      config_file=config_file)  # fmt: skip
    assert refused.returncode == 1
    lenient = write_config_file(
        tmp_path / "lenient.toml", databases, "[smime]\nallow_address_mismatch = true\n"
    )
    allowed = run_cli("cert", "import", "der@vault.test", str(tmp_path / "foreign.pem"),
                      config_file=lenient)  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert len((await stored(databases, "der"))[1]) == len(public) + 1


def _gpgsm_import(p12: Path, password: str) -> subprocess.CompletedProcess[bytes]:
    home = Path(tempfile.mkdtemp(prefix="gpgsm-"))  # short: gpg-agent's socket path
    try:
        home.chmod(0o700)
        return subprocess.run(
            ["gpgsm", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
             "--passphrase-fd", "0", "--import", str(p12)],
            input=password.encode() + b"\n", capture_output=True, check=False, timeout=60,
        )  # fmt: skip
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)


async def test_legacy_pkcs12_imports_into_gpgsm(databases, config_file, tmp_path):
    await make_vaultbox(databases, "legacy@vault.test")
    modern, legacy = tmp_path / "modern.p12", tmp_path / "legacy.p12"
    for path, extra in ((modern, []), (legacy, ["--legacy"])):
        result = run_cli("cert", "generate", "legacy@vault.test", "--p12", str(path), *extra,
                         config_file=config_file, stdin="p12-pw\n")  # fmt: skip
        assert result.returncode == 0, result.stderr
    imported = _gpgsm_import(legacy, "p12-pw")
    assert imported.returncode == 0, imported.stderr.decode()
    assert b"secret keys imported: 1" in imported.stderr
    refused = _gpgsm_import(modern, "p12-pw")  # what --legacy is for
    assert b"secret keys imported: 1" not in refused.stderr
    # The legacy file still opens with OpenSSL (with its legacy provider) and the password.
    key = openssl("pkcs12", "-legacy", "-in", str(legacy), "-passin", "pass:p12-pw",
                  "-nocerts", "-nodes")  # fmt: skip
    assert b"PRIVATE KEY" in key


async def test_import_warns_when_rsa_and_ec_certificates_mix(databases, config_file, tmp_path):
    await make_vaultbox(databases, "mixing@vault.test")
    rsa_pem, _ = smime.generate_certificate("mixing@vault.test")
    ec_pem, _ = smime.generate_certificate("mixing@vault.test", ec=True)
    (tmp_path / "rsa.pem").write_bytes(rsa_pem)
    (tmp_path / "ec.pem").write_bytes(ec_pem)
    first = run_cli("cert", "import", "mixing@vault.test", str(tmp_path / "rsa.pem"),
                    config_file=config_file)  # fmt: skip
    assert first.returncode == 0 and "warning" not in first.stderr
    mixed = run_cli("cert", "import", "mixing@vault.test", str(tmp_path / "ec.pem"),
                    config_file=config_file)  # fmt: skip
    assert mixed.returncode == 0, mixed.stderr
    assert "warning: mixing@vault.test now has RSA and EC certificates" in mixed.stderr
    assert len((await stored(databases, "mixing"))[1]) == 2
