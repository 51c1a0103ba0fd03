"""A real client we did not write: mbsync (isync) copies a vaultbox of 100 messages to a local
Maildir over implicit TLS, and every file is the stored message and decrypts with openssl."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import pytest

from tests.imap_support import (
    imap_config,
    make_box,
    ports,
    running_imap,
    store_mail,
)
from tests.intake_support import openssl_decrypt

pytestmark = pytest.mark.skipif(shutil.which("mbsync") is None, reason="isync is not installed")

COUNT = 100


async def test_mbsync_pulls_every_message_byte_for_byte(databases, tls_files, ca_file, tmp_path):
    box = await make_box(databases, "mbsync@example.test", tmp_path)
    stored = await store_mail(databases, box, COUNT)
    cfg = imap_config(databases, tls_files)
    _, tls_port = ports(cfg)
    local = tmp_path / "mail"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    config.write_text(
        f"""IMAPAccount vault
Host localhost
Port {tls_port}
User {box.username}
Pass {box.password}
SSLType IMAPS
CertificateFile {ca_file}
AuthMechs PLAIN

IMAPStore vault-remote
Account vault

MaildirStore vault-local
Path {local}/
Inbox {local}/INBOX

Channel vault
Far :vault-remote:
Near :vault-local:
Patterns INBOX Sent
Create Near
Sync Pull
SyncState *
"""
    )
    async with running_imap(cfg):
        result = await asyncio.to_thread(
            subprocess.run,
            ["mbsync", "-c", str(config), "-a"],
            capture_output=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    files = sorted((local / "INBOX" / "new").iterdir()) + sorted(
        (local / "INBOX" / "cur").iterdir()
    )
    assert len(files) == COUNT
    # mbsync writes Maildir files with LF line endings and adds its X-TUID tracking header;
    # otherwise they are the stored bytes
    assert {re.sub(rb"(?m)^X-TUID: .*\n", b"", path.read_bytes()) for path in files} == {
        body.replace(b"\r\n", b"\n") for body in stored
    }
    for path in files[:: COUNT // 10]:
        assert b"line of text" in openssl_decrypt(path.read_bytes(), box.key_path)
