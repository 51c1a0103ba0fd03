"""The whole chain on one machine, with real Postfix configured from contrib/postfix/main.cf:

Internet-style SMTP to Postfix -> LMTP to the intake -> stored encrypted -> read over IMAP ->
decrypted by openssl; and a client logging in to Postfix with SASL through the auth socket.
This test is the proof that the contrib snippets are right.
"""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import ssl
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests import postfix_support
from tests.intake_support import add_certificate, openssl_decrypt, stored_messages
from tests.service_support import NotifySocket, http_get, serve_process, service_config
from tests.support import REPO, Databases, make_motorblock, make_vaultbox

pytestmark = pytest.mark.skipif(
    postfix_support.skip_reason() is not None, reason=str(postfix_support.skip_reason())
)
CONTRIB_MAIN_CF = REPO / "contrib" / "postfix" / "main.cf"
VAULTBOX = "alice@vaultbox.example"  # the domain contrib/postfix/main.cf names


def contrib_settings(intake_port: int) -> dict[str, str]:
    """The `key = value` lines of contrib/postfix/main.cf, with the test's intake port."""
    settings = {}
    for line in CONTRIB_MAIN_CF.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    assert settings["virtual_transport"] == "lmtp:inet:127.0.0.1:2424"
    settings["virtual_transport"] = f"lmtp:inet:127.0.0.1:{intake_port}"
    return settings


def _message(subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "sender@outside.example"
    message["To"] = VAULTBOX
    message["Subject"] = subject
    message.set_content(body)
    return message


def _wait_for_rows(databases: Databases, vaultbox, count: int, postfix) -> list[dict]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = asyncio.run(stored_messages(databases, vaultbox))
        if len(rows) >= count:
            return rows
        time.sleep(0.3)
    raise AssertionError(f"{count} message(s) not stored; Postfix log:\n{postfix.log()[-3000:]}")


def test_postfix_to_intake_to_imap_and_sasl_through_the_auth_socket(
    databases: Databases, tls_files, tls_ca, tmp_path: Path
):
    box = asyncio.run(make_vaultbox(databases, VAULTBOX, password="imap-pass-1"))
    key_path = asyncio.run(add_certificate(databases, box.vaultbox, tmp_path))
    asyncio.run(
        make_motorblock(
            databases, username="mb-e2e", password="mb-pass-1", domain="outside.example"
        )
    )
    tls_context = ssl.create_default_context()
    tls_ca.configure_trust(tls_context)

    config_path, ports = service_config(tmp_path / "c.toml", databases, tls_files)
    postfix = postfix_support.PrivatePostfix(
        {
            **contrib_settings(ports["intake"]),
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(tls_files[0]),
            "smtpd_tls_key_file": str(tls_files[1]),
        }
    )
    postfix.start()
    notify = NotifySocket(tmp_path)
    try:
        # The auth socket goes where contrib's smtpd_sasl_path (private/encimap-auth, relative
        # to the queue directory) points, readable by group postfix as the .socket unit does.
        socket_path = postfix.base / "queue" / "private" / "encimap-auth"
        config_path.write_text(
            config_path.read_text().replace(
                f'listen = ["unix:{tmp_path}/auth"]',
                f'listen = ["unix:{socket_path}"]\nsocket_group = "postfix"',
            )
        )
        with serve_process(config_path, "all", env={"NOTIFY_SOCKET": str(notify.path)}) as process:
            notify.wait_for("READY=1", process=process)

            # 1. Inbound: plain SMTP to Postfix, delivered to the vaultbox over LMTP.
            with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as smtp:
                smtp.send_message(_message("inbound", "Hello through Postfix.\n"))

            # 2. Submission through Postfix with SASL decided by our auth socket.
            with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as smtp:
                smtp.starttls(context=tls_context)
                with pytest.raises(smtplib.SMTPAuthenticationError):
                    smtp.login("mb-e2e", "wrong-password")
            with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as smtp:
                smtp.starttls(context=tls_context)
                smtp.login("mb-e2e", "mb-pass-1")
                smtp.send_message(_message("submitted", "Sent with SASL via encimap.\n"))

            rows = _wait_for_rows(databases, box.vaultbox, 2, postfix)
            assert all(b"Hello through Postfix" not in row["body_encrypted"] for row in rows)

            # 3. Read back over IMAP (STARTTLS) and decrypt with openssl.
            imap = imaplib.IMAP4("127.0.0.1", ports["imap"])
            imap.starttls(ssl_context=tls_context)
            imap.login(box.username, "imap-pass-1")
            imap.select("INBOX")
            bodies = []
            for uid in (row["uid"] for row in rows):
                status, data = imap.uid("FETCH", str(uid), "(BODY.PEEK[])")
                assert status == "OK"
                bodies.append(data[0][1])
            imap.logout()
            assert bodies == [bytes(row["body_encrypted"]) for row in rows]
            plain = [openssl_decrypt(body, key_path) for body in bodies]
            assert b"Hello through Postfix." in plain[0] and b"Subject: inbound" in plain[0]
            assert b"Sent with SASL via encimap." in plain[1]

            # 4. The metrics moved with those deliveries and logins.
            metrics = http_get(f"http://127.0.0.1:{ports['metrics']}/metrics")[1]
            assert 'encimap_deliveries_total{outcome="stored"} 2.0' in metrics
            assert (
                'encimap_auth_decisions_total{kind="motorblock",result="ok",service="smtp"}'
                in metrics
            )
        assert (
            "SASL LOGIN authentication failed" in postfix.log()
            or "SASL PLAIN authentication failed" in postfix.log()
        )
    finally:
        notify.close()
        postfix.stop()
        postfix.cleanup()
