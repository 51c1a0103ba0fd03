"""Real mail retrievers we did not write: fetchmail (STARTTLS, certificate checked against the
test CA, `--keep --all`) and getmail6 (implicit TLS, `read_all`, no delete, then `--new`) fetch
a vaultbox into local files through a delivery command. Each must end with every stored
message, byte for byte apart from the trace header it adds, each decrypting with `openssl cms`,
and the server must still hold them all."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.imap_support import (
    encrypt_for,
    imap_config,
    login,
    make_box,
    plain_message,
    ports,
    running_imap,
    store,
    store_mail,
    unfolded_header,
)
from tests.intake_support import openssl_decrypt

COUNT = 20


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, timeout=60, check=False, **kwargs)


def _without_trace(data: bytes) -> bytes:
    """The message as stored: LF turned back into CRLF, the trace fields the client put in front
    (Received, Delivered-To, Return-Path) and getmail's X-getmail-retrieved-from-mailbox
    (last in the header) dropped."""
    data = data.replace(b"\r\n", b"\n")
    trace = re.compile(rb"(?:Received|Delivered-To|Return-Path):[^\n]*\n(?:[ \t][^\n]*\n)*")
    while match := trace.match(data):
        data = data[match.end() :]
    data = re.sub(rb"(?m)^X-getmail-retrieved-from-mailbox: [^\n]*\n", b"", data, count=1)
    return data.replace(b"\n", b"\r\n")


def _server_flags(port: int, tls_ca, box) -> list[bytes]:
    client = login(port, tls_ca, box)
    try:
        client.select("INBOX", readonly=True)
        _, data = client.fetch("1:*", "(FLAGS)")
        return data
    finally:
        client.logout()


def _fetchmail_setup(
    tmp_path: Path, ca_file: Path, port: int, box, *options: str
) -> tuple[list[str], dict[str, str], Path]:
    """(argv, environment, delivery directory) of fetchmail polling `box` over STARTTLS on
    `port`, checking the certificate, delivering each message to a file of its own."""
    out = tmp_path / "out"
    out.mkdir()
    mda = tmp_path / "mda.sh"
    mda.write_text(f'#!/bin/sh\nexec cat > "$(mktemp -p {out} msg.XXXXXXXX)"\n')
    mda.chmod(0o755)
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"set no syslog\n"
        f"poll localhost service {port} protocol IMAP auth password\n"
        f'  user "{box.username}" password "{box.password}"\n'
        f"  sslproto tls1.2+ sslcertck sslcertfile {ca_file}\n"
        f'  keep {" ".join(options)} mda "{mda}"\n'
    )
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(tmp_path), "FETCHMAILHOME": str(tmp_path)}
    return ["fetchmail", "-f", str(rc), "-i", str(tmp_path / "ids"), "-v"], env, out


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail is not installed")
async def test_fetchmail_keeps_and_retrieves_every_message_over_starttls(
    databases, named_tls_files, tls_ca, ca_file, tmp_path
):
    box = await make_box(databases, "fetchmail@example.test", tmp_path)
    stored = await store_mail(databases, box, COUNT)
    cfg = imap_config(databases, named_tls_files)
    starttls_port, _ = ports(cfg)
    argv, env, out = _fetchmail_setup(tmp_path, ca_file, starttls_port, box, "fetchall")
    async with running_imap(cfg):
        result = await asyncio.to_thread(_run, argv, env=env)
        flags = await asyncio.to_thread(_server_flags, starttls_port, tls_ca, box)
    log = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    assert result.returncode == 0, log
    # fetchmail upgraded the connection with STARTTLS and checked the certificate
    assert "STARTTLS" in log, log
    files = sorted(out.iterdir())
    assert len(files) == COUNT, log
    assert sorted(_without_trace(path.read_bytes()) for path in files) == sorted(stored)
    for path in files[:: COUNT // 4]:
        assert b"line of text" in openssl_decrypt(_without_trace(path.read_bytes()), box.key_path)
    # --keep: all still there, and fetchmail marked what it delivered as seen
    assert len(flags) == COUNT
    assert all(b"\\Seen" in item for item in flags), flags


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail is not installed")
async def test_fetchmail_idle_retrieves_new_mail_as_it_arrives(
    databases, named_tls_files, tls_ca, ca_file, tmp_path
):
    """fetchmail's `idle`: after the first poll it waits in IDLE, and a message stored then
    wakes it and is retrieved without a new poll (only it: the others are \\Seen by then)."""
    box = await make_box(databases, "fetchidle@example.test", tmp_path)
    stored = await store_mail(databases, box, 2)
    cfg = imap_config(databases, named_tls_files)
    starttls_port, _ = ports(cfg)
    argv, env, out = _fetchmail_setup(tmp_path, ca_file, starttls_port, box, "idle")

    async def files(count: int) -> list[Path]:
        for _ in range(300):  # bounded: 30 s at most
            found = sorted(out.iterdir())
            if len(found) >= count or process.returncode is not None:
                return found
            await asyncio.sleep(0.1)
        return sorted(out.iterdir())

    async with running_imap(cfg):
        process = await asyncio.create_subprocess_exec(
            *argv, "--nodetach", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            first = await files(2)
            late = encrypt_for(box, plain_message(77))
            await store(databases, box, late)
            second = await files(3)
        finally:
            if process.returncode is None:
                process.terminate()
            log = (await process.communicate())[0].decode(errors="replace")
    assert len(first) == 2, log
    assert "IDLE" in log, log
    assert len(second) == 3, log
    assert sorted(_without_trace(path.read_bytes()) for path in second) == sorted([*stored, late])


@pytest.mark.skipif(shutil.which("getmail") is None, reason="getmail6 is not installed")
async def test_getmail_retrieves_every_message_into_a_maildir_over_tls(
    databases, tls_files, tls_ca, ca_file, tmp_path
):
    box = await make_box(databases, "getmail@example.test", tmp_path)
    stored = await store_mail(databases, box, COUNT)
    cfg = imap_config(databases, tls_files)
    starttls_port, tls_port = ports(cfg)
    out = tmp_path / "out"
    out.mkdir()
    home = tmp_path / "getmail"
    home.mkdir()
    (home / "getmailrc").write_text(
        f"""[retriever]
type = SimpleIMAPSSLRetriever
server = localhost
port = {tls_port}
username = {box.username}
password = {box.password}
ca_certs = {ca_file}
mailboxes = ("INBOX",)

[destination]
# getmail's Maildir delivery refuses to run as root; an external MDA may be allowed to
type = MDA_external
path = /bin/sh
arguments = ("-c", "exec cat > $(mktemp -p {out} msg.XXXXXXXX)")
allow_root_commands = true

[options]
read_all = true
delete = false
verbose = 2
"""
    )
    argv = ["getmail", f"--getmaildir={home}", "--rcfile=getmailrc"]
    async with running_imap(cfg):
        first = await asyncio.to_thread(_run, argv)
        # a second run retrieves nothing new (getmail's own record of UIDVALIDITY/UID)
        second = await asyncio.to_thread(_run, [*argv, "--new"])
        flags = await asyncio.to_thread(_server_flags, starttls_port, tls_ca, box)
    log = first.stdout.decode(errors="replace") + first.stderr.decode(errors="replace")
    assert first.returncode == 0, log
    assert second.returncode == 0, second.stderr.decode(errors="replace")
    files = sorted(out.iterdir())
    assert len(files) == COUNT, log
    # getmail re-generates the header with Python's email package, which folds the long
    # Content-Type line; the rest is the stored bytes
    assert sorted(unfolded_header(_without_trace(path.read_bytes())) for path in files) == sorted(
        unfolded_header(body) for body in stored
    )
    for path in files[:: COUNT // 4]:
        assert b"line of text" in openssl_decrypt(_without_trace(path.read_bytes()), box.key_path)
    assert f"{COUNT} messages".encode() in first.stdout or str(COUNT).encode() in first.stdout
    assert b"0 messages (0 bytes) retrieved" in second.stdout, second.stdout
    assert len(flags) == COUNT
