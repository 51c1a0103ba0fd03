"""Moving a mailbox tree to encimap the way operators do, with a real sync tool between two
real servers: mbsync (isync) copies every folder of a Dovecot account, with its flags, into a
vaultbox (IMAP to IMAP, encimap over implicit TLS with the certificate checked), then out
again into a local Maildir. (imapsync, the usual tool for this, is not in Debian 12.)
Every message arrives encrypted to the vaultbox and decrypts to what Dovecot held; folder
names, message counts and flags are the same at each step."""

from __future__ import annotations

import asyncio
import imaplib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import dovecot_support
from tests.imap_support import imap_config, login, make_box, ports, running_imap
from tests.intake_support import openssl_decrypt, stored_messages

pytestmark = [
    pytest.mark.skipif(shutil.which("mbsync") is None, reason="isync is not installed"),
    pytest.mark.skipif(
        dovecot_support.available() is not None, reason=str(dovecot_support.available())
    ),
]

# folder -> [(number, flags)]
TREE = {
    "INBOX": [(1, r"(\Seen)"), (2, r"(\Flagged)"), (3, "()")],
    "Work": [(4, r"(\Seen \Answered)"), (5, "()")],
    "Work/Projects": [(6, r"(\Seen \Flagged)")],
    "Archive": [(7, r"(\Seen)"), (8, r"(\Seen \Draft)")],
}


def _message(number: int) -> bytes:
    return (
        f"From: Someone {number} <someone{number}@example.org>\r\n"
        f"To: migrate@example.test\r\n"
        f"Subject: migrated {number}\r\n"
        f"Date: Tue, 2 Jan 2024 09:0{number}:00 +0000\r\n"
        f"Message-ID: <migrated{number}@example.org>\r\n"
        f"\r\nbody of message {number}\r\n"
    ).encode()


def _fill_dovecot(port: int) -> None:
    client = imaplib.IMAP4("127.0.0.1", port)
    client.login(dovecot_support.USER, dovecot_support.PASSWORD)
    for folder, messages in TREE.items():
        if folder != "INBOX":
            client.create(folder)
        for number, flags in messages:
            client.append(folder, flags, None, _message(number))
    client.logout()


def _flag_set(flags: bytes) -> set[str]:
    return {flag for flag in re.findall(rb"\\\w+", flags)} - {b"\\Recent"}


def _encimap_tree(port: int, tls_ca, box) -> dict[str, list[tuple[bytes, set]]]:
    """folder -> [(message body, flags)] as encimap serves them."""
    client = login(port, tls_ca, box)
    tree = {}
    try:
        for folder in TREE:
            typ, _ = client.select(f'"{folder}"', readonly=True)
            assert typ == "OK", folder
            _, data = client.fetch("1:*", "(FLAGS BODY.PEEK[])")
            tree[folder] = [
                (item[1], _flag_set(item[0])) for item in data if isinstance(item, tuple)
            ]
    finally:
        client.logout()
    return tree


def _maildir_flags(path: Path) -> set[bytes]:
    letters = path.name.rpartition(":2,")[2]
    names = {"S": b"\\Seen", "F": b"\\Flagged", "R": b"\\Answered", "D": b"\\Draft"}
    return {names[letter] for letter in letters if letter in names}


async def test_mbsync_moves_a_dovecot_tree_into_a_vaultbox_and_out(
    databases, tls_files, tls_ca, ca_file, tmp_path
):
    box = await make_box(databases, "migrate@example.test", tmp_path)
    cfg = imap_config(databases, tls_files)
    starttls_port, tls_port = ports(cfg)
    local = tmp_path / "out"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    dovecot = dovecot_support.Dovecot([])
    config.write_text(
        f"""IMAPStore dovecot
Host 127.0.0.1
Port {dovecot.port}
User {dovecot_support.USER}
Pass {dovecot_support.PASSWORD}
SSLType None
AuthMechs LOGIN

IMAPStore vault
Host localhost
Port {tls_port}
User {box.username}
Pass {box.password}
SSLType IMAPS
CertificateFile {ca_file}
AuthMechs PLAIN

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel into
Far :dovecot:
Near :vault:
Patterns {" ".join(TREE)}
Create Near
Sync Pull
SyncState {tmp_path}/state-into/

Channel out
Far :vault:
Near :local:
Patterns *
Create Near
Sync Pull
SyncState *
"""
    )
    (tmp_path / "state-into").mkdir()

    def mbsync(channel: str) -> str:
        result = subprocess.run(
            ["mbsync", "-c", str(config), channel],
            capture_output=True,
            timeout=60,
            check=False,
        )
        log = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
        assert result.returncode == 0, log
        return log

    with dovecot:
        await asyncio.to_thread(_fill_dovecot, dovecot.port)
        async with running_imap(cfg):
            await asyncio.to_thread(mbsync, "into")
            tree = await asyncio.to_thread(_encimap_tree, starttls_port, tls_ca, box)
            await asyncio.to_thread(mbsync, "out")
            # a second migration run finds nothing to copy
            await asyncio.to_thread(mbsync, "into")
            again = await asyncio.to_thread(_encimap_tree, starttls_port, tls_ca, box)

    for folder, expected in TREE.items():
        served = tree[folder]
        assert len(served) == len(expected), folder
        for (body, flags), (number, wanted) in zip(served, expected, strict=True):
            assert flags == _flag_set(wanted.encode()), (folder, number, flags)
            assert b"body of message" not in body  # stored encrypted
            plain = openssl_decrypt(body, box.key_path)
            assert f"body of message {number}".encode() in plain
            assert f"Subject: migrated {number}".encode() in plain
    assert again == tree
    rows = await stored_messages(databases, box.demo.vaultbox)
    assert len(rows) == sum(len(messages) for messages in TREE.values())

    # out again: the local Maildir tree has every folder, message and flag
    for folder, expected in TREE.items():
        directory = local / folder
        files = sorted((directory / "cur").iterdir()) + sorted((directory / "new").iterdir())
        assert len(files) == len(expected), folder
        found = sorted(
            (
                int(re.search(rb"body of message (\d+)", decrypted).group(1)),
                _maildir_flags(path),
            )
            for path in files
            for decrypted in [openssl_decrypt(path.read_bytes(), box.key_path)]
        )
        assert found == sorted(
            (number, _flag_set(wanted.encode())) for number, wanted in expected
        ), folder
