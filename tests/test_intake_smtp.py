"""SMTP mode with smtplib, on a private PostgreSQL cluster this test stops and starts."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.intake_support import (
    add_certificate,
    intake_config,
    openssl_decrypt,
    port_of,
    running_intake,
    stored_messages,
)
from tests.support import Databases, make_vaultbox


def message(subject: str, size: int = 0) -> bytes:
    mail = EmailMessage()
    mail["From"] = "sender@outside.test"
    mail["To"] = "one@vault.test, two@vault.test"
    mail["Subject"] = subject
    mail.set_content("body line\n" + "x" * size)
    return mail.as_bytes().replace(b"\n", b"\r\n")


def smtp_send(port: int, recipients: list[str], data: bytes) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail("sender@outside.test", recipients, data)


async def test_smtp_mode_codes_and_database_outage(private_cluster: Databases, tmp_path: Path):
    databases = private_cluster
    one = (await make_vaultbox(databases, "one@vault.test")).vaultbox
    two = (await make_vaultbox(databases, "two@vault.test")).vaultbox
    key_one = await add_certificate(databases, one, tmp_path)
    await add_certificate(databases, two, tmp_path)
    cfg = intake_config(databases, protocol="smtp", max_message_size=50_000)
    port = port_of(cfg)
    async with running_intake(cfg):
        refused = await asyncio.to_thread(
            smtp_send, port, ["one@vault.test", "nobody@vault.test"], message("first")
        )
        assert refused == {"nobody@vault.test": (550, b"5.1.1 No such mailbox")}
        stored = await stored_messages(databases, one)
        assert len(stored) == 1
        assert b"Subject: first" in openssl_decrypt(bytes(stored[0]["body_encrypted"]), key_one)
        assert b"with ESMTP id" in openssl_decrypt(bytes(stored[0]["body_encrypted"]), key_one)

        with pytest.raises(smtplib.SMTPSenderRefused) as too_big:
            await asyncio.to_thread(
                smtp_send, port, ["one@vault.test"], message("big", size=60_000)
            )
        assert too_big.value.smtp_code == 552  # refused at MAIL FROM SIZE=

        # PostgreSQL goes away between RCPT and the end of DATA.
        def outage_session() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo()
                client.mail("sender@outside.test")
                assert client.rcpt("one@vault.test")[0] == 250
                assert client.rcpt("two@vault.test")[0] == 250
                databases.cluster.stop("fast")
                return client.data(message("during outage"))

        code, text = await asyncio.to_thread(outage_session)
        assert (code, text[:5]) == (451, b"4.3.0")

        await asyncio.to_thread(databases.cluster.start)
        assert len(await stored_messages(databases, one)) == 1
        assert len(await stored_messages(databases, two)) == 0

        refused = await asyncio.to_thread(
            smtp_send, port, ["one@vault.test", "two@vault.test"], message("after outage")
        )
        assert refused == {}
    assert len(await stored_messages(databases, one)) == 2
    assert len(await stored_messages(databases, two)) == 1


async def test_smtp_oversize_data_without_size_is_552(databases: Databases, tmp_path: Path):
    box = (await make_vaultbox(databases, "sizes@vault.test")).vaultbox
    await add_certificate(databases, box, tmp_path)
    cfg = intake_config(databases, protocol="smtp", max_message_size=20_000)

    def send_without_size() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port_of(cfg), timeout=30) as client:
            client.ehlo()
            client.esmtp_features.pop("size", None)  # no SIZE= on MAIL: caught at DATA
            client.mail("sender@outside.test")
            client.rcpt("sizes@vault.test")
            return client.data(message("big", size=30_000))

    async with running_intake(cfg):
        code, text = await asyncio.to_thread(send_without_size)
    assert (code, text) == (552, b"5.3.4 Message too big")
    assert await stored_messages(databases, box) == []
