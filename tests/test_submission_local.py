"""`submission.local_delivery`: a vaultbox sending to a vaultbox on this host stores the message
through the delivery path (encrypted, in encrypted_emails) instead of relaying it; every other
recipient still goes upstream."""

from __future__ import annotations

import asyncio

import pytest

from encimap import openpgp
from encimap.store import openpgp_keys
from tests.intake_support import add_certificate, openssl_decrypt, stored_messages
from tests.openpgp_support import decrypt, make_key, stop_agent
from tests.smime_support import split_entity
from tests.submission_helpers import login, message, starttls_port, submission
from tests.support import make_config, make_motorblock, make_vaultbox

SENDER, SENDER_PASS = "dora@local.test", "dora-secret"
LOCAL = "erin@local.test"
MB_USER, MB_PASS, MB_DOMAIN = "mb-local", "mb-local-secret", "local.test"


@pytest.fixture(scope="module")
def accounts(databases, tmp_path_factory):
    async def create():
        sender = await make_vaultbox(databases, SENDER, password=SENDER_PASS)
        recipient = await make_vaultbox(databases, LOCAL)
        key = await add_certificate(databases, recipient.vaultbox, tmp_path_factory.mktemp("k"))
        await make_motorblock(databases, username=MB_USER, password=MB_PASS, domain=MB_DOMAIN)
        return sender, recipient, key

    return asyncio.run(create())


def config(databases, tls_files, upstream_port: int, local_delivery: bool):
    return make_config(
        databases,
        tls_files,
        submission={
            "listen": "127.0.0.1:0",
            "relay": f"127.0.0.1:{upstream_port}",
            "relay_timeout": 5.0,
            "local_delivery": local_delivery,
        },
    )


def send(port: int, tls_ca, username: str, password: str, sender: str, recipients, body: bytes):
    with login(port, tls_ca, username, password) as client:
        return client.sendmail(sender, recipients, body)


async def test_vaultbox_to_local_vaultbox_is_stored_encrypted_not_relayed(
    databases, tls_files, tls_ca, accounts, upstream
):
    sender, recipient, key = accounts
    controller, sink_handler = upstream
    recipients = [LOCAL, "bob@elsewhere.test"]
    original = message(SENDER, recipients, subject="kept local")
    before = len(await stored_messages(databases, recipient.vaultbox))
    async with submission(config(databases, tls_files, controller.port, True)) as service:
        refused = await asyncio.to_thread(
            send, starttls_port(service), tls_ca, sender.username, SENDER_PASS, SENDER,
            recipients, original,
        )  # fmt: skip
    assert refused == {}
    [relayed] = sink_handler.messages
    assert relayed.rcpt_tos == ["bob@elsewhere.test"]
    rows = await stored_messages(databases, recipient.vaultbox)
    assert len(rows) == before + 1
    stored = rows[-1]["body_encrypted"]
    stored = stored if isinstance(stored, bytes) else stored.encode()
    assert b"kept local" not in stored.split(b"\r\n\r\n", 1)[1]  # the body is encrypted
    decrypted = openssl_decrypt(stored, key)
    assert b"Subject: kept local" in decrypted
    assert original.split(b"\r\n\r\n", 1)[1] in decrypted.replace(b"\n", b"\r\n").replace(
        b"\r\r\n", b"\r\n"
    )


async def test_only_vaultbox_logins_deliver_locally_and_only_when_enabled(
    databases, tls_files, tls_ca, accounts, upstream
):
    sender, recipient, _ = accounts
    controller, sink_handler = upstream
    before = len(await stored_messages(databases, recipient.vaultbox))
    async with submission(config(databases, tls_files, controller.port, True)) as service:
        await asyncio.to_thread(
            send, starttls_port(service), tls_ca, MB_USER, MB_PASS, f"news@{MB_DOMAIN}",
            [LOCAL], message(f"news@{MB_DOMAIN}", [LOCAL]),
        )  # fmt: skip
    async with submission(config(databases, tls_files, controller.port, False)) as service:
        await asyncio.to_thread(
            send, starttls_port(service), tls_ca, sender.username, SENDER_PASS, SENDER,
            [LOCAL], message(SENDER, [LOCAL]),
        )  # fmt: skip
    assert [m.rcpt_tos for m in sink_handler.messages] == [[LOCAL], [LOCAL]]
    assert len(await stored_messages(databases, recipient.vaultbox)) == before


async def test_local_delivery_to_an_openpgp_vaultbox(
    databases, tls_files, tls_ca, accounts, upstream, tmp_path
):
    sender, _, _ = accounts
    controller, sink_handler = upstream
    address = "pgp-local@local.test"
    key = make_key(address)
    try:
        box = (await make_vaultbox(databases, address)).vaultbox
        cert, info = openpgp.check_key(key.public, address)
        conn = await databases.connect()
        try:
            await openpgp_keys.put_key(conn, vaultbox_id=box.id, armored_key=str(cert), info=info)
        finally:
            await conn.close()
        original = message(SENDER, [address], subject="pgp local")
        async with submission(config(databases, tls_files, controller.port, True)) as service:
            refused = await asyncio.to_thread(
                send, starttls_port(service), tls_ca, sender.username, SENDER_PASS, SENDER,
                [address], original,
            )  # fmt: skip
        assert refused == {} and sink_handler.messages == []
        [row] = await stored_messages(databases, box)
        assert row["encryption_method"].startswith("openpgp/")
        header, body = split_entity(decrypt("gpg", row["body_encrypted"], key, tmp_path))
        assert b"\r\nSubject: pgp local\r\n" in header
        assert body == split_entity(original)[1]
    finally:
        stop_agent(key)
