"""`encimap key import|generate|list|remove|prefer` as a user runs them, checked with GnuPG."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from encimap import openpgp
from encimap.store import openpgp_keys, vaultboxes
from tests.openpgp_support import gpg, make_key, revoked, rnp_key, stop_agent, tools_missing
from tests.support import Databases, make_vaultbox, run_cli, write_config_file

pytestmark = pytest.mark.skipif(bool(tools_missing()), reason=f"missing {tools_missing()}")


@pytest.fixture(scope="module")
def config_file(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Path:
    for address in ("keys@cli.test", "refuse@cli.test", "made@cli.test", "rsa@cli.test"):
        asyncio.run(make_vaultbox(databases, address))
    return write_config_file(tmp_path_factory.mktemp("cfg") / "encimap.toml", databases)


def key_cli(*args: str, config_file: Path, stdin: str | None = None):
    return run_cli("key", *args, config_file=config_file, stdin=stdin)


@pytest.mark.parametrize(
    ("kind", "options", "reason"),
    [
        ("no-encryption", {}, "no encryption-capable subkey"),
        ("rsa1024", {}, "RSA-1024 is too weak"),
        ("dsa", {}, "DSA keys are too weak"),
        ("ed25519", {"expire": "1d", "past": "20200101T000000"}, "the key expired on 2020-01-02"),
        ("revoked", {}, "the key is revoked"),
        ("wrong-address", {}, "no user ID with the address refuse@cli.test"),
    ],
)
def test_import_refusals_say_why(config_file, tmp_path, kind, options, reason) -> None:
    address = "other@else.test" if kind == "wrong-address" else "refuse@cli.test"
    gpg_kind = "ed25519" if kind in ("revoked", "wrong-address") else kind
    key = make_key(address, gpg_kind, **options)
    path = tmp_path / "key.asc"
    path.write_bytes(revoked(key) if kind == "revoked" else key.public)
    result = key_cli("import", "refuse@cli.test", str(path), config_file=config_file)
    stop_agent(key)
    assert result.returncode == 1
    assert reason in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    listed = key_cli("list", "refuse@cli.test", config_file=config_file)
    assert listed.stdout.strip() == "refuse@cli.test: preference openpgp"


def test_secret_keys_and_garbage_are_refused(config_file, tmp_path) -> None:
    key = make_key("keys@cli.test")
    stop_agent(key)
    secret = tmp_path / "secret.asc"
    secret.write_bytes(key.secret)
    result = key_cli("import", "keys@cli.test", str(secret), config_file=config_file)
    assert result.returncode == 1 and "secret key material" in result.stderr
    garbage = tmp_path / "garbage.asc"
    garbage.write_bytes(b"not a key\n")
    result = key_cli("import", "keys@cli.test", str(garbage), config_file=config_file)
    assert result.returncode == 1 and "not an OpenPGP key" in result.stderr


def test_import_binary_list_and_remove(config_file, tmp_path) -> None:
    key = make_key("keys@cli.test", "rsa3072")
    binary = tmp_path / "key.gpg"
    binary.write_bytes(gpg(key.home, "--export", key.fingerprint))
    stop_agent(key)
    result = key_cli("import", "KEYS@cli.test", str(binary), config_file=config_file)
    assert result.returncode == 0, result.stderr
    assert f"fingerprint: {key.fingerprint}" in result.stdout
    assert "rsa3072 (encryption: rsa3072)" in result.stdout
    again = key_cli("import", "keys@cli.test", str(binary), config_file=config_file)
    assert again.returncode == 0 and "updated for" in again.stdout
    listed = key_cli("list", "keys@cli.test", config_file=config_file)
    assert f"{key.fingerprint}  rsa3072  expires never  usable  <keys@cli.test>" in listed.stdout
    removed = key_cli("remove", "keys@cli.test", key.fingerprint.lower(), config_file=config_file)
    assert removed.returncode == 0, removed.stderr
    assert key.fingerprint not in key_cli("list", "keys@cli.test", config_file=config_file).stdout
    missing = key_cli("remove", "keys@cli.test", key.fingerprint, config_file=config_file)
    assert missing.returncode == 1 and "no OpenPGP key" in missing.stderr


@pytest.mark.parametrize(("address", "rsa"), [("made@cli.test", False), ("rsa@cli.test", True)])
async def test_generate_writes_a_protected_secret_key_gnupg_uses(
    databases, config_file, tmp_path, address, rsa
) -> None:
    out = tmp_path / "secret.asc"
    args = ["generate", address, "--out", str(out)] + (["--rsa"] if rsa else [])
    result = key_cli(*args, config_file=config_file, stdin="pass phrase\n")
    assert result.returncode == 0, result.stderr
    assert "passphrase" not in result.stdout  # it came from stdin: not printed
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.read_bytes().startswith(b"-----BEGIN PGP PRIVATE KEY BLOCK-----")
    listed = key_cli("list", address, config_file=config_file)
    assert ("rsa3072" if rsa else "ed25519") in listed.stdout and "usable" in listed.stdout
    [stored] = await _stored_keys(databases, address)
    assert b"PRIVATE KEY" not in stored.armored_key.encode()
    home = Path(tempfile.mkdtemp(prefix="gpg-user-"))  # short: gpg-agent's socket path
    gpg(home, "--import", str(out))
    assert _fingerprint(home) == stored.fingerprint
    # Encrypted to the stored public key by the library the intake uses, opened by GnuPG
    # with the secret key file only when given its passphrase.
    sealed = tmp_path / "m.eml"
    sealed.write_bytes(
        openpgp.encrypt_message(
            b"Subject: s\r\n\r\nfor the new key\r\n", [stored.armored_key]
        ).message
    )
    assert _gpg_with(home, "wrong", "--decrypt", str(sealed)).returncode != 0
    opened = _gpg_with(home, "pass phrase", "--decrypt", str(sealed))
    assert b"for the new key" in opened.stdout, opened.stderr
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    shutil.rmtree(home)
    again = key_cli(*args, config_file=config_file, stdin="x\n")
    assert again.returncode == 1 and "exists" in again.stderr


async def _stored_keys(databases: Databases, address: str) -> list:
    conn = await databases.connect()
    try:
        box = await vaultboxes.get_vaultbox(conn, address)
        return await openpgp_keys.keys_of(conn, box.id)
    finally:
        await conn.close()


def _gpg_with(home: Path, passphrase: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
         "--passphrase", passphrase, *args],
        capture_output=True, check=False,
    )  # fmt: skip


def _fingerprint(home: Path) -> str:
    colons = gpg(home, "--with-colons", "--list-keys").decode()
    return next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))


def test_an_older_copy_does_not_undo_a_revocation(config_file, tmp_path) -> None:
    """Importing a copy of a stored key merges it into the stored one, as GnuPG does: the copy
    from before the revocation leaves the key revoked (it used to replace the stored copy and
    make the key usable again)."""
    key = make_key("keys@cli.test")
    original, revocation = tmp_path / "original.asc", tmp_path / "revoked.asc"
    original.write_bytes(key.public)
    revocation.write_bytes(revoked(key))
    stop_agent(key)
    for path in (original, revocation):
        done = key_cli("import", "keys@cli.test", str(path), config_file=config_file)
        assert done.returncode == 0, done.stderr
    again = key_cli("import", "keys@cli.test", str(original), config_file=config_file)
    assert again.returncode == 0, again.stderr
    assert "the key is revoked" in again.stdout and "no longer encrypted" in again.stdout
    listed = key_cli("list", "keys@cli.test", config_file=config_file)
    assert f"{key.fingerprint}  ed25519  expires never  not usable" in listed.stdout
    key_cli("remove", "keys@cli.test", key.fingerprint, config_file=config_file)


async def test_list_says_why_a_stored_key_is_not_usable(databases, config_file) -> None:
    """A key stored before a check existed (here: RNP 0.16's, without a Features subpacket)
    is listed as the intake sees it, not usable, with the reason (it was listed as usable)."""
    key = rnp_key("keys@cli.test")
    stop_agent(key)
    cert = openpgp.load_key(key.public)
    info = openpgp.KeyInfo(
        fingerprint=key.fingerprint,
        user_ids=("<keys@cli.test>",),
        algorithm="rsa2048",
        encryption_algorithms=("rsa2048",),
        created=datetime.now(UTC),
        expires=None,
    )
    conn = await databases.connect()
    try:
        box = await vaultboxes.get_vaultbox(conn, "keys@cli.test")
        await openpgp_keys.put_key(conn, vaultbox_id=box.id, armored_key=str(cert), info=info)
    finally:
        await conn.close()
    listed = key_cli("list", "keys@cli.test", config_file=config_file)
    assert f"{key.fingerprint}  rsa2048  expires never  not usable" in listed.stdout
    assert f"not usable {key.fingerprint}: the key does not announce its features" in listed.stdout
    key_cli("remove", "keys@cli.test", key.fingerprint, config_file=config_file)
