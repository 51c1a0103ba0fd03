"""OpenPGP keys made by GnuPG for the tests, and decryption with three implementations that are
not ours: GnuPG (`gpg`), Sequoia (`sq`) and RNP (`rnp`, Thunderbird's OpenPGP library)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# name -> (primary, [(algorithm, usage) of subkeys]) as `gpg --quick-add-key` takes them.
KINDS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "ed25519": ("ed25519", [("cv25519", "encr")]),
    "rsa3072": ("rsa3072", [("rsa3072", "encr")]),
    "rsa2048": ("rsa2048", [("rsa2048", "encr")]),
    "rsa4096": ("rsa4096", [("rsa4096", "encr")]),
    "rsa3072-primary": ("rsa3072", []),  # one key that certifies and encrypts, no subkey
    "nistp256": ("nistp256", [("nistp256", "encr")]),
    "nistp384": ("nistp384", [("nistp384", "encr")]),
    "nistp521": ("nistp521", [("nistp521", "encr")]),
    "brainpoolP256r1": ("brainpoolP256r1", [("brainpoolP256r1", "encr")]),
    "two-subkeys": ("ed25519", [("cv25519", "encr"), ("rsa3072", "encr")]),
    "no-encryption": ("ed25519", [("ed25519", "sign")]),
    "rsa1024": ("rsa1024", [("rsa1024", "encr")]),
    "dsa": ("dsa2048", [("elg2048", "encr")]),
}
TOOLS = ("gpg", "sq", "rnp")
_ARMORED = re.compile(rb"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----\r?\n", re.S)


@dataclass(frozen=True)
class GpgKey:
    home: Path  # GNUPGHOME holding the secret key (no passphrase)
    fingerprint: str
    public: bytes  # armoured
    secret: bytes  # armoured, unprotected

    @property
    def public_file(self) -> Path:
        path = self.home / "public.asc"
        path.write_bytes(self.public)
        return path


def gpg(home: Path, *args: str, data: bytes = b"") -> bytes:
    done = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--yes", "--pinentry-mode",
         "loopback", "--passphrase", "", *args],
        input=data, capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def make_key(
    address: str, kind: str = "ed25519", *, expire: str = "never", past: str = ""
) -> GpgKey:
    """A GnuPG key with user ID `<address>`; `past` fakes the creation time (an ISO time such
    as 20200101T000000) so that `expire` (say "1d") is already over."""
    # Short, so that gpg-agent's socket path fits (108 bytes); `stop_agent` removes it.
    home = Path(tempfile.mkdtemp(prefix=f"gpg-{kind}-"))
    home.chmod(0o700)
    primary, subkeys = KINDS[kind]
    fake = ["--faked-system-time", past + "!"] if past else []
    usage = "cert" if subkeys else "cert,encr"
    gpg(home, *fake, "--quick-generate-key", f"<{address}>", primary, usage, expire)
    fingerprint = _fingerprint(gpg(home, "--with-colons", "--list-keys").decode())
    for algorithm, usage in subkeys:
        gpg(home, *fake, "--quick-add-key", fingerprint, algorithm, usage, expire)
    return GpgKey(
        home,
        fingerprint,
        gpg(home, "--armor", "--export", fingerprint),
        gpg(home, "--armor", "--export-secret-keys", fingerprint),
    )


def make_any_key(address: str, kind: str) -> GpgKey:
    """A key as GnuPG (`kind` of KINDS), Sequoia (`sq-cv25519`, `sq-rsa3072`, `sq-storage`
    whose subkey is for storage encryption only: `sq key generate`) or RNP (`rnp-rsa2048`:
    `rnpkeys --generate-key`, then given a Features subpacket by GnuPG's `setpref`, see
    `rnp_key`) makes it; the secret key is in GnuPG's home as well, for `gpg --decrypt`."""
    if kind.startswith("sq-"):
        suite, purpose = {
            "sq-cv25519": ("cv25519", "universal"),
            "sq-rsa3072": ("rsa3k", "universal"),
            "sq-storage": ("cv25519", "storage"),
        }[kind]
        work = Path(tempfile.mkdtemp(prefix="sq-"))
        _run(["sq", "key", "generate", "--userid", f"<{address}>", "--cipher-suite", suite,
              "--can-encrypt", purpose, "--export", str(work / "key.pgp")])  # fmt: skip
        secret = (work / "key.pgp").read_bytes()
        shutil.rmtree(work)
        return _in_gnupg(_run(["sq", "key", "extract-cert"], secret), secret)
    if kind == "rnp-rsa2048":
        key = rnp_key(address)
        gpg(key.home, "--command-fd", "0", "--edit-key", key.fingerprint,
            data=b"setpref\ny\nsave\n")  # fmt: skip
        return dataclasses.replace(
            key, public=gpg(key.home, "--armor", "--export", key.fingerprint)
        )
    return make_key(address, kind)


def rnp_key(address: str) -> GpgKey:
    """A key as `rnpkeys --generate-key` (RNP 0.16, Thunderbird's library) makes it: RSA-2048
    with an RSA-2048 encryption subkey and no Features subpacket."""
    work = Path(tempfile.mkdtemp(prefix="rnp-"))
    try:
        rnpkeys = ["rnpkeys", "--homedir", str(work)]
        _run([*rnpkeys, "--generate-key", "--userid", f"<{address}>", "--password", ""])
        public = _run([*rnpkeys, "--export-key", f"<{address}>"])
        secret = _run([*rnpkeys, "--export-key", "--secret", f"<{address}>"])
    finally:
        shutil.rmtree(work)
    return _in_gnupg(public, secret)


def revoke_subkey(key: GpgKey, number: int) -> bytes:
    """The public key with its `number`th subkey (1 = first) revoked by GnuPG."""
    gpg(key.home, "--command-fd", "0", "--edit-key", key.fingerprint,
        data=f"key {number}\nrevkey\ny\n0\n\ny\nsave\n".encode())  # fmt: skip
    return gpg(key.home, "--armor", "--export", key.fingerprint)


def _in_gnupg(public: bytes, secret: bytes) -> GpgKey:
    home = Path(tempfile.mkdtemp(prefix="gpg-imp-"))
    home.chmod(0o700)
    gpg(home, "--import", data=secret)
    fingerprint = _fingerprint(gpg(home, "--with-colons", "--list-keys").decode())
    return GpgKey(home, fingerprint, public, secret)


def revoked(key: GpgKey) -> bytes:
    """The public key with GnuPG's stored revocation certificate applied."""
    certificate = (key.home / "openpgp-revocs.d" / f"{key.fingerprint}.rev").read_bytes()
    gpg(key.home, "--import", data=certificate.replace(b":-----BEGIN", b"-----BEGIN"))
    return gpg(key.home, "--armor", "--export", key.fingerprint)


def stop_agent(key: GpgKey) -> None:
    """Stop the key's gpg-agent and remove its home."""
    subprocess.run(
        ["gpgconf", "--kill", "gpg-agent"],
        env={**os.environ, "GNUPGHOME": str(key.home)}, capture_output=True, check=False,
    )  # fmt: skip
    shutil.rmtree(key.home, ignore_errors=True)


def armored_part(stored: bytes) -> bytes:
    """The ASCII-armoured OpenPGP message of a stored PGP/MIME message, as a client takes it."""
    found = _ARMORED.search(stored)
    assert found is not None, stored[:500]
    return found.group()


def decrypt(tool: str, stored: bytes, key: GpgKey, work: Path) -> bytes:
    """The plaintext of a stored PGP/MIME message, decrypted by `tool` with `key`."""
    message = work / f"message-{tool}.asc"
    message.write_bytes(armored_part(stored))
    if tool == "gpg":
        return gpg(key.home, "--decrypt", str(message))
    secret = work / f"secret-{key.fingerprint}.asc"
    secret.write_bytes(key.secret)
    if tool == "sq":
        command = ["sq", "decrypt", "--recipient-key", str(secret), str(message)]
    else:
        command = ["rnp", "--keyfile", str(secret), "--decrypt", str(message), "--output", "-"]
    return _run(command)


def tools_missing() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _run(command: list[str], data: bytes = b"") -> bytes:
    done = subprocess.run(command, input=data, capture_output=True, check=False, timeout=300)
    assert done.returncode == 0, (command, done.stderr.decode(errors="replace"))
    return done.stdout


def _fingerprint(colons: str) -> str:
    return next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
