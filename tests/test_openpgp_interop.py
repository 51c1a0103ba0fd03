"""Keys as other implementations make them and hostile keys, checked at import: what is
accepted is what GnuPG, Sequoia (sq) and RNP can read mail for; what is refused says why and
how to mend it. Delivery of the accepted kinds over LMTP is in test_openpgp_intake.py."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pysequoia
import pytest

from encimap import openpgp
from encimap.openpgp.keys import (
    MAX_ENCRYPTION_SUBKEYS,
    MAX_KEY_BYTES,
    MAX_USER_IDS,
    encryption_subkeys,
)
from tests.openpgp_support import (
    TOOLS,
    GpgKey,
    decrypt,
    gpg,
    make_key,
    revoke_subkey,
    rnp_key,
    stop_agent,
    tools_missing,
)
from tests.smime_support import split_entity

pytestmark = pytest.mark.skipif(bool(tools_missing()), reason=f"missing {tools_missing()}")
ADDRESS = "interop@pgp.test"
RAW = b"From: a@sender.test\r\nTo: interop@pgp.test\r\nSubject: s\r\n\r\nbody\r\n"


@pytest.fixture
def keys():
    made: list[GpgKey] = []
    yield made
    for key in made:
        stop_agent(key)


def subkey_ids(key: GpgKey) -> list[str]:
    """Key IDs of the key's subkeys, in order, lower-case as the engine reports them."""
    colons = gpg(key.home, "--with-colons", "--list-keys").decode().splitlines()
    return [line.split(":")[4].lower() for line in colons if line.startswith("sub:")]


def add_subkey(key: GpgKey, algorithm: str, expire: str = "never", past: str = "") -> bytes:
    fake = ["--faked-system-time", past + "!"] if past else []
    gpg(key.home, *fake, "--quick-add-key", key.fingerprint, algorithm, "encr", expire)
    return gpg(key.home, "--armor", "--export", key.fingerprint)


def refusal(data: bytes, address: str = ADDRESS) -> str:
    with pytest.raises(openpgp.KeyRefused) as refused:
        openpgp.check_key(data, address)
    return str(refused.value)


def test_rnp_key_without_features_is_refused_until_renewed(keys, tmp_path) -> None:
    """RNP 0.16 makes keys without a Features subpacket; Sequoia then encrypts in the RFC 9580
    format (PKESK v6, SEIPD v2) that neither GnuPG 2.2, RNP 0.16 nor sq 0.27 reads. Refused
    with the remedy; after GnuPG's `setpref` every tool reads the mail."""
    key = rnp_key(ADDRESS)
    keys.append(key)
    reason = refusal(key.public)
    assert "does not announce its features" in reason and "setpref" in reason, reason
    # A second user ID added by GnuPG announces features, and Sequoia reads those of the one
    # it takes as primary (which of the two depends on their signature times): accepted only
    # when mail to it is in the format RNP 0.16 reads.
    gpg(key.home, "--quick-add-uid", key.fingerprint, "Second <second@pgp.test>")
    try:
        cert, _ = openpgp.check_key(gpg(key.home, "--armor", "--export", key.fingerprint), ADDRESS)
    except openpgp.KeyRefused as exc:
        assert "does not announce its features" in str(exc)
    else:
        stored = openpgp.encrypt_message(RAW, [cert]).message
        assert split_entity(decrypt("rnp", stored, key, tmp_path))[1] == b"body\r\n"
    gpg(key.home, "--command-fd", "0", "--edit-key", key.fingerprint, data=b"setpref\ny\nsave\n")
    cert, _info = openpgp.check_key(gpg(key.home, "--armor", "--export", key.fingerprint), ADDRESS)
    stored = openpgp.encrypt_message(RAW, [cert]).message
    for tool in TOOLS:
        assert split_entity(decrypt(tool, stored, key, tmp_path))[1] == b"body\r\n", tool


def test_only_expired_encryption_subkeys_are_refused(keys) -> None:
    """The binding falls back to an expired subkey when no encryption subkey is alive; an
    expired subkey's secret may be gone, so such a key is refused, and beside a valid subkey
    only the valid one is used."""
    key = make_key(ADDRESS, "no-encryption", past="20191201T000000")
    keys.append(key)
    expired_only = add_subkey(key, "cv25519", "1d", past="20200101T000000")
    reason = refusal(expired_only)
    assert "no encryption-capable subkey valid now: the last expired on 2020-01-02" in reason
    both = add_subkey(key, "cv25519")
    cert, info = openpgp.check_key(both, ADDRESS)
    _signing, expired, valid = subkey_ids(key)
    assert encryption_subkeys(cert) == [valid] and info.encryption_algorithms == ("cv25519",)
    assert expired not in openpgp.keys.pkesk_key_ids(pysequoia.encrypt(b"", [cert], armor=False))


def test_revoked_subkey_beside_a_valid_one_is_not_used(keys) -> None:
    key = make_key(ADDRESS, "two-subkeys")
    keys.append(key)
    cv25519, rsa = subkey_ids(key)
    cert, info = openpgp.check_key(revoke_subkey(key, 2), ADDRESS)
    assert encryption_subkeys(cert) == [cv25519] and info.encryption_algorithms == ("cv25519",)
    assert "no encryption-capable subkey" in refusal(revoke_subkey(key, 1))
    assert rsa  # both existed


def test_the_address_must_be_in_a_user_id_that_is_not_revoked(keys) -> None:
    """The binding lists a user ID whose revocation it does not count yet (for a moment after
    it is made: a key exported right after `gpg --quick-revoke-uid` was accepted; here the
    revocation is dated two minutes ahead to hold that moment), and the address check took
    what it listed as valid."""
    key = make_key("other@else.test")
    keys.append(key)
    gpg(key.home, "--quick-add-uid", key.fingerprint, f"<{ADDRESS}>")
    assert openpgp.check_key(gpg(key.home, "--armor", "--export", key.fingerprint), ADDRESS)
    ahead = (datetime.now(UTC) + timedelta(minutes=2)).strftime("%Y%m%dT%H%M%S!")
    gpg(key.home, "--faked-system-time", ahead, "--quick-revoke-uid", key.fingerprint,
        f"<{ADDRESS}>")  # fmt: skip
    armored = gpg(key.home, "--armor", "--export", key.fingerprint)
    assert f"<{ADDRESS}>" in map(str, pysequoia.Cert.from_bytes(armored).user_ids)
    reason = refusal(armored)
    assert f"no user ID with the address {ADDRESS}" in reason
    assert f"<{ADDRESS}> (revoked)" in reason, reason


def test_sha1_self_signatures_are_refused_with_the_remedy(keys) -> None:
    """Sequoia's standard policy no longer accepts SHA-1 key signatures (RFC 9580 9.5); GnuPG
    2.2 still makes them with --cert-digest-algo SHA1. The reason names SHA-1 and the remedy,
    and the renewed key is accepted."""
    home = Path(tempfile.mkdtemp(prefix="gpg-sha1-"))
    home.chmod(0o700)
    sha1 = ("--cert-digest-algo", "SHA1", "--digest-algo", "SHA1")
    gpg(home, *sha1, "--quick-generate-key", f"<{ADDRESS}>", "rsa3072", "cert", "never")
    colons = gpg(home, "--with-colons", "--list-keys").decode()
    fingerprint = next(line.split(":")[9] for line in colons.splitlines() if line[:4] == "fpr:")
    key = GpgKey(home, fingerprint, b"", b"")
    keys.append(key)
    gpg(home, *sha1, "--quick-add-key", fingerprint, "rsa3072", "encr", "never")
    reason = refusal(gpg(home, "--armor", "--export", fingerprint))
    assert "signed with SHA-1" in reason and "--quick-set-expire" in reason, reason
    gpg(home, "--quick-set-expire", fingerprint, "2y")
    gpg(home, "--quick-set-expire", fingerprint, "2y", "*")
    assert openpgp.check_key(gpg(home, "--armor", "--export", fingerprint), ADDRESS)


def test_brainpool_is_refused_as_unsupported(keys) -> None:
    """GnuPG and RNP make brainpool keys; the binding's backend cannot verify or encrypt to
    them, and says only "No binding signature"."""
    key = make_key(ADDRESS, "brainpoolP256r1")
    keys.append(key)
    assert "brainpoolP256r1 keys are not supported" in refusal(key.public)


def test_oversized_keys_are_refused_before_parsing(keys) -> None:
    key = make_key(ADDRESS)
    keys.append(key)
    padded = key.public + b"\n" * MAX_KEY_BYTES  # still a valid armoured key
    assert "more than 512 KiB" in refusal(padded) and "export-minimal" in refusal(padded)


def test_keys_with_too_many_user_ids_are_refused(keys) -> None:
    """Each user ID costs about 0.5 ms to check (2,000: 1.07 s on the intake's loop); a key
    with more than MAX_USER_IDS is refused before the binding validates it."""
    key = make_key(ADDRESS)
    keys.append(key)
    secret, cert = pysequoia.Tsk.from_bytes(key.secret), pysequoia.Cert.from_bytes(key.public)
    for number in range(MAX_USER_IDS):
        cert = cert.add_user_id(f"<u{number}@pgp.test>", secret.certifier())
    reason = refusal(str(cert).encode())
    assert f"{MAX_USER_IDS + 1} user IDs, at most {MAX_USER_IDS}" in reason, reason


def test_a_user_id_of_nested_comments_is_refused_not_a_crash(keys) -> None:
    """The email package reads nested comments recursively: a user ID of thousands of `(`
    overflowed the stack, so the import ended in a traceback. It names no address."""
    key = make_key("other@pgp.test")
    keys.append(key)
    secret, cert = pysequoia.Tsk.from_bytes(key.secret), pysequoia.Cert.from_bytes(key.public)
    cert = cert.add_user_id("(" * 5000 + f"<{ADDRESS}>", secret.certifier())
    reason = refusal(str(cert).encode())
    assert f"no user ID with the address {ADDRESS}" in reason, reason[:200]


def test_malformed_and_secret_inputs_are_refused(keys) -> None:
    key = make_key(ADDRESS)
    keys.append(key)
    binary = gpg(key.home, "--export", key.fingerprint)
    stub = gpg(key.home, "--armor", "--export-secret-subkeys", key.fingerprint)
    cases = {
        b"": "found 0",
        key.public[: len(key.public) // 2]: "not an OpenPGP key",
        binary[:-10]: "not an OpenPGP key",
        binary + b"\x00junk": "not an OpenPGP key",
        pysequoia.encrypt(b"x", [pysequoia.Cert.from_bytes(key.public)]): "not an OpenPGP key",
        gpg(key.home, "--export-secret-keys", key.fingerprint): "secret key material",
        stub: "secret key material",  # gpg --export-secret-subkeys: primary stubbed
        key.public + key.secret: "expected one OpenPGP key, found 2",
    }
    for data, reason in cases.items():
        assert reason in refusal(data), data[:60]


def test_keys_with_too_many_encryption_subkeys_are_refused(keys) -> None:
    key = make_key(ADDRESS)
    keys.append(key)
    for _ in range(MAX_ENCRYPTION_SUBKEYS - 1):
        exported = add_subkey(key, "cv25519")
    assert len(openpgp.check_key(exported, ADDRESS)[1].encryption_algorithms) == 8
    reason = refusal(add_subkey(key, "cv25519"))
    assert f"9 valid encryption subkeys, at most {MAX_ENCRYPTION_SUBKEYS}" in reason


def test_v6_keys_get_seipd_v2_alone_and_v1_beside_a_v4_key(keys, tmp_path) -> None:
    """RFC 9580 keys (version 6; pysequoia makes them, gpg 2.2, sq 0.27 and rnp 0.16 neither
    make nor read them) are accepted: alone they get PKESK v6 / SEIPD v2, which their owner's
    software reads; beside a GnuPG key in the same vaultbox the message is SEIPD v1 and each
    key opens it (the v6 one read here by Sequoia, the only reader at hand)."""
    tsk = pysequoia.Tsk.generate(f"<{ADDRESS}>", profile=pysequoia.Profile.RFC9580)
    v6, info = openpgp.check_key(str(tsk.extract_certificate()).encode(), ADDRESS)
    assert len(info.fingerprint) == 64 and info.encryption_algorithms == ("x25519",)
    key = make_key(ADDRESS)
    keys.append(key)
    for recipients, pkesk_version in (([v6], 6), ([v6, openpgp.load_key(key.public)], 3)):
        sealed = pysequoia.encrypt(RAW, recipients, armor=False)
        assert sealed[2] == pkesk_version  # the first PKESK's version octet (2-octet header)
        assert pysequoia.decrypt(sealed, tsk.decryptor()).bytes == RAW
    stored = openpgp.encrypt_message(RAW, [v6, openpgp.load_key(key.public)]).message
    assert split_entity(decrypt("rnp", stored, key, tmp_path))[1] == b"body\r\n"
