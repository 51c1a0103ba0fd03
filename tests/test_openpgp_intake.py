"""LMTP delivery to OpenPGP vaultboxes over a real socket into real PostgreSQL, decrypted by
GnuPG, Sequoia (sq) and RNP, none of them the code that encrypted."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from encimap import openpgp
from encimap.store import openpgp_keys
from tests.intake_support import (
    LMTPClient,
    add_certificate,
    intake_config,
    openssl_decrypt,
    port_of,
    running_intake,
    stored_messages,
)
from tests.openpgp_support import (
    TOOLS,
    GpgKey,
    decrypt,
    gpg,
    make_any_key,
    make_key,
    revoked,
    rnp_key,
    stop_agent,
    tools_missing,
)
from tests.smime_support import outer_headers, split_entity
from tests.support import Databases, make_vaultbox, run_cli, write_config_file

pytestmark = pytest.mark.skipif(bool(tools_missing()), reason=f"missing {tools_missing()}")

# kind -> the algorithm the processing log names (the encryption subkeys used)
# (gpg --quick-generate-key unless named sq- or rnp-: see openpgp_support.make_any_key)
KINDS = {
    "ed25519": "openpgp/cv25519",
    "rsa2048": "openpgp/rsa2048",
    "rsa3072": "openpgp/rsa3072",
    "rsa4096": "openpgp/rsa4096",
    "rsa3072-primary": "openpgp/rsa3072",
    "nistp256": "openpgp/nistp256",
    "nistp384": "openpgp/nistp384",
    "nistp521": "openpgp/nistp521",
    "two-subkeys": "openpgp/cv25519+rsa3072",
    "sq-cv25519": "openpgp/cv25519",
    "sq-rsa3072": "openpgp/rsa3072",
    "sq-storage": "openpgp/cv25519",
    "rnp-rsa2048": "openpgp/rsa2048",
}
BODY = b"Hello,\r\n.leading dot survives\r\n\tand a tab\r\n-----not armour\r\nbye\r\n"


def message(to: str, subject: str = "quarterly numbers") -> bytes:
    return (
        b"From: Alice <alice@sender.test>\r\n"
        b"To: " + to.encode() + b"\r\n"
        b"Bcc: hidden@sender.test\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Message-ID: <" + subject.replace(" ", ".").encode() + b"@sender.test>\r\n"
        b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        b"\r\n" + BODY
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openpgp")


@pytest.fixture(scope="module")
def keys(work: Path):
    made = {kind: make_any_key(f"{kind}@pgp.test", kind) for kind in KINDS}
    yield made
    for key in made.values():
        stop_agent(key)


async def add_key(databases: Databases, vaultbox_id, key: bytes, address: str) -> None:
    cert, info = openpgp.check_key(key, address)
    conn = await databases.connect()
    try:
        await openpgp_keys.put_key(conn, vaultbox_id=vaultbox_id, armored_key=str(cert), info=info)
    finally:
        await conn.close()


async def deliver(port: int, recipient: str, data: bytes) -> tuple[str, list[str]]:
    client = await LMTPClient.connect(port)
    try:
        assert (await client.command("LHLO client.test")).startswith("250")
        rcpt, replies = await client.transaction("alice@sender.test", [recipient], data)
        return rcpt[0], replies
    finally:
        await client.close()


async def _processing_log(databases: Databases, vaultbox_id) -> dict:
    conn = await databases.connect()
    try:
        row = await conn.fetchrow(
            "SELECT * FROM email_processing_logs WHERE vaultbox_id = $1 ORDER BY id DESC LIMIT 1",
            vaultbox_id,
        )
    finally:
        await conn.close()
    return dict(row)


@pytest.fixture(scope="module")
def config_file(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config_file(tmp_path_factory.mktemp("cfg") / "encimap.toml", databases)


@pytest.mark.parametrize("kind", KINDS)
async def test_every_tool_decrypts_the_stored_message(databases, keys, work, kind) -> None:
    key: GpgKey = keys[kind]
    address = f"{kind}@pgp.test"
    box = (await make_vaultbox(databases, address)).vaultbox
    await add_key(databases, box.id, key.public, address)
    cfg = intake_config(databases)
    async with running_intake(cfg):
        rcpt, replies = await deliver(port_of(cfg), address, message(address))
    assert rcpt.startswith("250"), rcpt
    assert replies[0].startswith("250 2.0.0"), replies
    [row] = await stored_messages(databases, box)
    stored = row["body_encrypted"]

    outer = outer_headers(stored)
    assert outer["subject"] == ["[...]"]
    assert "bcc" not in outer
    assert outer["content-type"][0].startswith(
        'multipart/encrypted; protocol="application/pgp-encrypted";'
    )
    assert b"Subject: quarterly" not in stored and b"leading dot" not in stored
    assert row["encryption_method"] == KINDS[kind]
    assert row["certificate_fingerprints"] == [key.fingerprint]
    log_row = await _processing_log(databases, box.id)
    assert (log_row["outcome"], log_row["reply_code"]) == ("stored", "250")
    assert log_row["algorithm"] == KINDS[kind]
    assert log_row["certificate_fingerprints"] == [key.fingerprint]
    assert row["size_bytes"] == len(stored)

    for tool in TOOLS:
        plain = decrypt(tool, stored, key, work)
        header, body = split_entity(plain)
        assert body == BODY, tool  # byte for byte, the leading dot un-stuffed
        # the Content-Type carrying hp="cipher" first, then the original fields in order
        assert header.startswith(b"Content-Type: text/plain"), tool
        assert b"\r\nReturn-Path: <alice@sender.test>\r\nReceived: from " in header, tool
        assert b"\r\nBcc: hidden@sender.test\r\n" in header, tool
        assert b"\r\nSubject: quarterly numbers\r\n" in header, tool
        assert b'hp="cipher"' in header, tool
    subject = base64.b64decode(row["subject_encrypted"])
    assert gpg(key.home, "--decrypt", data=subject) == b"quarterly numbers"


async def test_mixed_vaultbox_follows_its_preference(databases, keys, work, config_file) -> None:
    address = "mixed@pgp.test"
    key = make_key(address, "ed25519")
    box = (await make_vaultbox(databases, address)).vaultbox
    await add_key(databases, box.id, key.public, address)
    smime_key = await add_certificate(databases, box, work)
    cfg = intake_config(databases)
    async with running_intake(cfg):
        assert (await deliver(port_of(cfg), address, message(address, "one")))[1][0][:3] == "250"
        prefer = run_cli("key", "prefer", address, "smime", config_file=config_file)
        assert prefer.returncode == 0, prefer.stderr
        assert (await deliver(port_of(cfg), address, message(address, "two")))[1][0][:3] == "250"
    first, second = await stored_messages(databases, box)
    assert first["encryption_method"].startswith("openpgp/")
    assert b"\r\nSubject: one\r\n" in decrypt("gpg", first["body_encrypted"], key, work)
    assert b"application/pkcs7-mime" in second["body_encrypted"]
    assert b"-----BEGIN PGP MESSAGE-----" not in second["body_encrypted"]
    assert b"\r\nSubject: two\r\n" in openssl_decrypt(second["body_encrypted"], smime_key)
    stop_agent(key)


async def test_rcpt_451_once_the_only_key_is_revoked(databases, work, config_file) -> None:
    address = "revoking@pgp.test"
    key = make_key(address, "ed25519")
    box = (await make_vaultbox(databases, address)).vaultbox
    imported = run_cli("key", "import", address, str(key.public_file), config_file=config_file)
    assert imported.returncode == 0, imported.stderr
    cfg = intake_config(databases)
    async with running_intake(cfg):
        assert (await deliver(port_of(cfg), address, message(address)))[0].startswith("250")
        revocation = work / "revoked.asc"
        revocation.write_bytes(revoked(key))
        update = run_cli("key", "import", address, str(revocation), config_file=config_file)
        assert update.returncode == 0, update.stderr
        assert "revoked" in update.stdout
        rcpt, _ = await deliver(port_of(cfg), address, message(address, "after"))
    assert rcpt.startswith("451 4.7.1"), rcpt
    assert len(await stored_messages(databases, box)) == 1  # only the one before
    stop_agent(key)


@pytest.mark.parametrize("kind", ["expired-subkey", "rnp-no-features"])
async def test_rcpt_451_for_a_stored_key_the_checks_now_refuse(databases, kind) -> None:
    """Keys stored without today's checks (inserted here as an older release would have):
    one whose only encryption subkey has expired, and RNP 0.16's without Features. Both were
    delivered to (the expired subkey, or SEIPD v2 that the owner's software cannot read);
    now RCPT answers 451 4.7.1 and nothing is stored."""
    address = f"{kind}@pgp.test"
    if kind == "rnp-no-features":
        key = rnp_key(address)
        public = key.public
    else:
        key = make_key(address, "no-encryption", past="20191201T000000")
        gpg(key.home, "--faked-system-time", "20200101T000000!", "--quick-add-key",
            key.fingerprint, "cv25519", "encr", "1d")  # fmt: skip
        public = gpg(key.home, "--armor", "--export", key.fingerprint)
    stop_agent(key)
    box = (await make_vaultbox(databases, address)).vaultbox
    rnp = kind.startswith("rnp")
    algorithm, encryption = ("rsa2048", "rsa2048") if rnp else ("ed25519", "cv25519")
    info = openpgp.KeyInfo(
        key.fingerprint, (f"<{address}>",), algorithm, (encryption,), datetime.now(UTC), None
    )
    conn = await databases.connect()
    try:
        await openpgp_keys.put_key(
            conn, vaultbox_id=box.id, armored_key=str(openpgp.load_key(public)), info=info
        )
    finally:
        await conn.close()
    cfg = intake_config(databases)
    async with running_intake(cfg):
        rcpt, replies = await deliver(port_of(cfg), address, message(address))
    assert rcpt.startswith("451 4.7.1"), (rcpt, replies)
    assert await stored_messages(databases, box) == []


async def test_already_encrypted_and_mismatched_keys(databases, keys, work) -> None:
    """Inline OpenPGP is stored as it is; a key for another address is used only when
    smime.allow_address_mismatch allows it (451 4.7.1 otherwise)."""
    address = "passthrough@pgp.test"
    box = (await make_vaultbox(databases, address)).vaultbox
    key = keys["ed25519"]
    await add_key(databases, box.id, key.public, "ed25519@pgp.test")
    inline = (
        b"From: a@sender.test\r\nTo: " + address.encode() + b"\r\nSubject: inline\r\n\r\n"
        b"-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA+fake\r\n-----END PGP MESSAGE-----\r\n"
    )
    strict = intake_config(databases)
    async with running_intake(strict):
        rcpt, _ = await deliver(port_of(strict), address, inline)
    assert rcpt.startswith("451 4.7.1"), rcpt
    lenient = dataclasses.replace(
        strict, smime=dataclasses.replace(strict.smime, allow_address_mismatch=True)
    )
    async with running_intake(lenient):
        rcpt, replies = await deliver(port_of(lenient), address, inline)
        _, stored_reply = await deliver(port_of(lenient), address, message(address, "mismatch"))
    assert rcpt.startswith("250") and replies[0].startswith("250"), (rcpt, replies)
    assert stored_reply[0].startswith("250"), stored_reply
    first, second = await stored_messages(databases, box)
    assert first["body_encrypted"].endswith(inline[inline.index(b"\r\n\r\n") :])
    assert first["encryption_method"] == "none"
    assert b"\r\nSubject: mismatch\r\n" in decrypt("sq", second["body_encrypted"], key, work)


@pytest.mark.parametrize("extra", [0, 1, 2])
def test_large_messages_across_armour_chunks_decrypt(keys, work, extra) -> None:
    """Several armour chunks and every base64 padding length: the CRC-24 line is right."""
    key = keys["two-subkeys"]
    body = (b"0123456789abcdef" * 4 + b"\r\n") * 40_000 + b"x" * extra + b"\r\n"
    raw = b"From: a@sender.test\r\nSubject: big\r\n\r\n" + body
    stored = openpgp.encrypt_message(raw, [openpgp.load_key(key.public)]).message
    for tool in TOOLS:
        assert split_entity(decrypt(tool, stored, key, work))[1] == body, tool
