"""`encimap dev` (what `make run` runs): private cluster, demo data, clean stop on Ctrl-C."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import bcrypt
from cryptography import x509

from encimap.pgcluster import LocalCluster, free_port
from encimap.wkd.directory import hashed_local_part
from tests.support import REPO


def _demo_config(path: Path) -> Path:
    ports = [free_port() for _ in range(7)]
    path.write_text(
        f'[intake]\nlisten = "127.0.0.1:{ports[0]}"\n'
        f'[submission]\nlisten = "127.0.0.1:{ports[1]}"\nrelay = "127.0.0.1:{ports[2]}"\n'
        f'[imap]\nlisten = "127.0.0.1:{ports[3]}"\ntls_listen = "127.0.0.1:{ports[4]}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{ports[5]}"\n'
        f'[wkd]\nlisten = "127.0.0.1:{ports[6]}"\n'
        "[auth]\nbcrypt_cost = 4\n"
    )
    return path


def _start(tmp_path: Path, pg_port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "encimap",
            "--config",
            str(_demo_config(tmp_path / "c.toml")),
            "dev",
            "--dir",
            str(tmp_path / "demo"),
            "--pg-port",
            str(pg_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _read_until_ready(process: subprocess.Popen[str], deadline: float) -> str:
    output = ""
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output += line
        if "Ctrl-C stops" in line:
            return output
    process.kill()
    raise AssertionError(f"demo did not come up:\n{output}")


async def _stored_hashes(url: str, table: str, username: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(
            f"SELECT password_hash FROM {table} WHERE username = $1",  # noqa: S608
            username,
        )
    finally:
        await conn.close()


async def _stored_certificate(url: str) -> x509.Certificate:
    conn = await asyncpg.connect(url)
    try:
        pem = await conn.fetchval("SELECT pem_content FROM public_certificates")
    finally:
        await conn.close()
    return x509.load_pem_x509_certificate(pem.encode())


async def _stored_openpgp_fingerprint(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT fingerprint FROM openpgp_keys")
    finally:
        await conn.close()


def _secret_key_fingerprint(path: Path, passphrase: str) -> str:
    """The demo's secret key file, imported into GnuPG with its passphrase."""
    home = Path(tempfile.mkdtemp(prefix="gpg-demo-"))
    try:
        home.chmod(0o700)
        gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback"]
        unlock = ["--passphrase", passphrase]
        subprocess.run([*gpg, *unlock, "--import", str(path)], check=True, capture_output=True)
        # Unlocking the key needs the passphrase: a clearsign with it succeeds.
        signed = subprocess.run([*gpg, *unlock, "--clearsign"], input=b"x", capture_output=True)
        assert signed.returncode == 0, signed.stderr
        colons = subprocess.run(
            [*gpg, "--with-colons", "--list-secret-keys"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
        return next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _wkd_status(listen: str, local: str) -> int:
    connection = http.client.HTTPConnection(*listen.rsplit(":", 1), timeout=10)
    try:
        connection.request(
            "GET",
            f"/.well-known/openpgpkey/hu/{hashed_local_part(local)}",
            headers={"Host": "example.test"},
        )
        return connection.getresponse().status
    finally:
        connection.close()


def _p12_certificate(path: Path, password: str) -> x509.Certificate:
    """The certificate in the demo's PKCS#12 file, opened by openssl with `password`."""
    result = subprocess.run(
        ["openssl", "pkcs12", "-in", str(path), "-passin", f"pass:{password}", "-nokeys"],
        capture_output=True,
        check=True,
    )
    return x509.load_pem_x509_certificate(result.stdout)


def test_demo_starts_prints_working_logins_and_stops_cleanly(tmp_path: Path):
    tmp_path.chmod(0o755)
    pg_port = free_port()
    process = _start(tmp_path, pg_port)
    try:
        output = _read_until_ready(process, time.monotonic() + 90)
        platform_url = re.search(r"PostgreSQL\s+(\S+motorical_db)", output)[1]
        encimap_url = re.search(r"\s(postgresql://\S+motorical_encrypted_imap)", output)[1]
        motorblock = re.search(r"motorblock \(SMTP\): username (\S+)  password (\S+)", output)
        vaultbox = re.search(
            r"vaultbox demo@example.test .*: username (\S+)  password (\S+)", output
        )
        stored = asyncio.run(_stored_hashes(platform_url, "motor_blocks", motorblock[1]))
        assert bcrypt.checkpw(motorblock[2].encode(), stored.encode())
        for table in ("vaultbox_smtp_credentials", "imap_app_credentials"):
            stored = asyncio.run(_stored_hashes(encimap_url, table, vaultbox[1]))
            assert bcrypt.checkpw(vaultbox[2].encode(), stored.encode())
        p12 = re.search(
            r"S/MIME key for demo@example.test \(PKCS#12 (\S+)\): password (\S+)", output
        )
        assert _p12_certificate(Path(p12[1]), p12[2]) == asyncio.run(
            _stored_certificate(encimap_url)
        )
        openpgp_key = re.search(
            r"OpenPGP key for pgp@example.test \(secret key (\S+);.*\): password (\S+)", output
        )
        assert openpgp_key, output
        assert _secret_key_fingerprint(Path(openpgp_key[1]), openpgp_key[2]) == asyncio.run(
            _stored_openpgp_fingerprint(encimap_url)
        )
        wkd = re.search(r"WKD\s+http://(\S+)/\.well-known", output)[1]
        assert _wkd_status(wkd, "pgp") == 200 and _wkd_status(wkd, "demo") == 404
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    assert not LocalCluster(tmp_path / "demo" / "pg").running

    # A second start reuses the cluster and data and hands out new passwords.
    process = _start(tmp_path, pg_port)
    try:
        again = _read_until_ready(process, time.monotonic() + 90)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert re.search(r"motorblock \(SMTP\): username (\S+)", again)[1] == motorblock[1]
    assert motorblock[2] not in again
