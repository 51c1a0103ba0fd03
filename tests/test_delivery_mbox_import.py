"""Mail as mailbox-import tools send it over LMTP, with the mbox `From ` line still in front:
the line is dropped, the header stays a header (outer fields in clear, protected inside), and
the protected header starts with the Content-Type carrying hp="cipher"."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

from encimap import mimeinfo
from encimap.delivery import trace
from encimap.smime import encrypt_message
from tests.imap_corpus import MBOX_FROM_LINE, PLAIN
from tests.smime_support import make_identity, openssl_decrypt_files

TRACE = trace.Trace(
    sender="importer@example.org",
    helo="importer.example.org",
    peer_ip="127.0.0.1",
    hostname="mx.example.test",
    protocol="LMTP",
    queue_id="Q1",
    received_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
)


def test_the_mbox_from_line_is_dropped_and_the_header_kept(tmp_path):
    identity = make_identity(tmp_path)
    prepared = trace.prepare(MBOX_FROM_LINE, TRACE)
    assert prepared.data.endswith(PLAIN)  # the original header follows the trace fields
    assert b"From sender@example.org" not in prepared.data
    assert prepared.message_id == "<plain@example.org>"

    stored = encrypt_message(prepared.data, [identity.pem]).message
    outer = email.message_from_bytes(stored, policy=email.policy.default)
    assert outer["From"] == "Alice Example <alice@example.org>"
    assert outer["To"] == "Bob <bob@example.org>, carol@example.org"
    assert outer["Date"] == "Mon, 01 Jan 2024 10:00:00 +0000"
    envelope = mimeinfo.describe(stored).envelope
    assert '"alice" "example.org"' in envelope and '"Mon, 1 Jan 2024' in envelope

    inner = openssl_decrypt_files(stored, identity.cert_path, identity.key_path, "-binary")
    first_line = inner.split(b"\r\n", 1)[0]
    assert first_line.startswith(b"Content-Type: text/plain"), inner[:200]
    assert inner.split(b"\r\n", 2)[1] == b' hp="cipher"; protected-headers="v1"'
    assert b"\r\nFrom: Alice Example <alice@example.org>\r\n" in inner


def test_hp_cipher_comes_first_even_after_a_malformed_line(tmp_path):
    identity = make_identity(tmp_path)
    raw = (
        b"From: a@example.org\r\nthis line is not a header field\r\n"
        b"Subject: s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n"
    )
    stored = encrypt_message(raw, [identity.pem]).message
    inner = openssl_decrypt_files(stored, identity.cert_path, identity.key_path, "-binary")
    header = inner.split(b"\r\n\r\n", 1)[0]
    assert header.startswith(
        b'Content-Type: text/plain; charset=utf-8;\r\n hp="cipher"; protected-headers="v1"\r\n'
    ), header
    assert header.count(b"Content-Type") == 1
    # a strict parser that stops at the malformed line still sees the protection
    assert b"hp=" in header.split(b"this line is not", 1)[0]
