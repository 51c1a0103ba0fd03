"""A real mail reader we did not write: mutt (GnuTLS) opens a vaultbox over implicit TLS,
certificate checked against the test CA, and copies every message to a local mbox, driven
by keys pushed at start-up in a pseudo-terminal (`script`). The mbox must hold every stored
message, byte for byte, each decrypting with `openssl cms`; one message flagged in mutt
must be flagged on the server."""

from __future__ import annotations

import asyncio
import mailbox
import os
import re
import shutil
import subprocess

import pytest

from tests.imap_support import (
    imap_config,
    login,
    make_box,
    ports,
    running_imap,
    store_mail,
    unfolded_header,
)
from tests.intake_support import openssl_decrypt

pytestmark = pytest.mark.skipif(
    shutil.which("mutt") is None or shutil.which("script") is None,
    reason="mutt (or util-linux script) is not installed",
)

COUNT = 8


def _flagged(port: int, tls_ca, box) -> list[bytes]:
    client = login(port, tls_ca, box)
    try:
        client.select("INBOX", readonly=True)
        _, data = client.search(None, "FLAGGED")
        return data[0].split()
    finally:
        client.logout()


async def test_mutt_copies_every_message_and_flags_one(
    databases, tls_files, tls_ca, ca_file, tmp_path
):
    box = await make_box(databases, "mutt@example.test", tmp_path)
    stored = await store_mail(databases, box, COUNT)
    cfg = imap_config(databases, tls_files)
    starttls_port, tls_port = ports(cfg)
    target = tmp_path / "copy.mbox"
    rc = tmp_path / "muttrc"
    rc.write_text(
        f"""set folder="imaps://localhost:{tls_port}/"
set imap_user="{box.username}"
set imap_pass="{box.password}"
set ssl_ca_certificates_file="{ca_file}"
set spoolfile="+INBOX"
set mbox_type=mbox
set confirmappend=no
set confirmcreate=no
set quit=yes
set move=no
set wait_key=no
set sort=mailbox-order
set header_cache=""
set mail_check=0
set timeout=1
"""
    )
    # tag all, copy the tagged to the mbox, flag the first message, sync, quit
    keys = (
        f"<tag-pattern>~A<enter><tag-prefix><copy-message>{target}<enter>"
        "<first-entry><flag-message><sync-mailbox><quit>"
    )
    command = f"mutt -n -F {rc} -f =INBOX -e 'push \"{keys}\"'"
    env = {**os.environ, "HOME": str(tmp_path), "TERM": "xterm", "COLUMNS": "120", "LINES": "40"}
    async with running_imap(cfg):
        result = await asyncio.to_thread(
            subprocess.run,
            ["script", "-qec", command, "/dev/null"],
            capture_output=True,
            timeout=60,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        flagged = await asyncio.to_thread(_flagged, starttls_port, tls_ca, box)
    screen = result.stdout.decode(errors="replace")[-3000:]
    assert result.returncode == 0, screen
    assert target.exists(), screen
    copied = [message.as_bytes() for message in mailbox.mbox(str(target))]
    assert len(copied) == COUNT, screen
    # mutt writes LF line endings, adds Content-Length and Lines to the header it copies and
    # folds the long Content-Type line; the rest is the stored bytes
    assert sorted(
        unfolded_header(re.sub(rb"(?m)^(?:Content-Length|Lines): \d+\n", b"", data, count=2), b"\n")
        for data in copied
    ) == sorted(unfolded_header(body).replace(b"\r\n", b"\n") for body in stored)
    for data in copied[:: COUNT // 4]:
        assert b"line of text" in openssl_decrypt(data, box.key_path)
    assert flagged == [b"1"], screen
