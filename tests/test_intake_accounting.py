"""What the intake records besides the message: metrics per outcome and per envelope, a
`tempfail` row when a delivery fails while the database still answers, and the certificate
cache that must not make an expired certificate usable."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from encimap import smime
from encimap.delivery.recipients import CertificateCache
from encimap.metrics import REGISTRY
from tests.intake_support import (
    LMTPClient,
    add_certificate,
    intake_config,
    port_of,
    running_intake,
    stored_messages,
)
from tests.support import Databases, make_vaultbox

MESSAGE = (
    b"From: <alice@sender.test>\r\n"
    b"Subject: counted\r\n"
    b"Message-ID: <counted@sender.test>\r\n"
    b"\r\n"
    b"body\r\n"
)
DELIVER_FUNCTION = (
    "encimap_deliver(uuid, bytea, timestamptz, text, text, text, text, text, text, text[], "
    "text, text, text, jsonb, timestamptz, jsonb, double precision, text, text, integer, integer)"
)


@pytest.fixture(scope="module")
def box(databases: Databases, tmp_path_factory: pytest.TempPathFactory):
    async def make():
        made = await make_vaultbox(databases, "counted@vault.test")
        await add_certificate(databases, made.vaultbox, tmp_path_factory.mktemp("keys"))
        return made.vaultbox

    return asyncio.run(make())


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def deliver(port: int, recipients: list[str], message: bytes) -> tuple[list, list]:
    client = await LMTPClient.connect(port)
    try:
        await client.command("LHLO client.test")
        return await client.transaction("alice@sender.test", recipients, message)
    finally:
        await client.close()


async def test_metrics_move_once_per_outcome_and_envelope(databases, box):
    cfg = intake_config(databases)
    before = {
        "stored": sample("encimap_deliveries_total", outcome="stored"),
        "duplicate": sample("encimap_deliveries_total", outcome="duplicate"),
        "rejected": sample("encimap_deliveries_total", outcome="rejected"),
        "envelopes": sample("encimap_encryption_seconds_count"),
    }
    async with running_intake(cfg):
        rcpt, data = await deliver(
            port_of(cfg), ["nobody@vault.test", "counted@vault.test"], MESSAGE
        )
        assert rcpt[0].startswith("550") and data[0].startswith("250")
        _, again = await deliver(port_of(cfg), ["counted@vault.test"], MESSAGE)
        assert again[0].startswith("250")
    assert sample("encimap_deliveries_total", outcome="stored") == before["stored"] + 1
    assert sample("encimap_deliveries_total", outcome="duplicate") == before["duplicate"] + 1
    assert sample("encimap_deliveries_total", outcome="rejected") == before["rejected"] + 1
    # The duplicate was encrypted too (it is recognised only when stored): two envelopes.
    assert sample("encimap_encryption_seconds_count") == before["envelopes"] + 2
    assert sample("encimap_encryption_seconds_sum") > 0


async def test_database_error_answers_451_stores_nothing_and_logs_tempfail(databases, box):
    """The delivery statement fails (its EXECUTE right is gone) while the database answers."""
    message = MESSAGE.replace(b"<counted@", b"<tempfail@")
    cfg = intake_config(databases)
    before = sample("encimap_deliveries_total", outcome="tempfail")
    stored_before = len(await stored_messages(databases, box))
    admin = await databases.connect()
    try:
        async with running_intake(cfg):
            await admin.execute(
                f"REVOKE EXECUTE ON FUNCTION {DELIVER_FUNCTION} FROM encimap_intake"
            )
            try:
                rcpt, data = await deliver(port_of(cfg), ["counted@vault.test"], message)
            finally:
                await admin.execute(
                    f"GRANT EXECUTE ON FUNCTION {DELIVER_FUNCTION} TO encimap_intake"
                )
            assert rcpt[0].startswith("250")
            assert data[0].startswith("451 4.3.0")
            rows = []
            for _ in range(50):  # the row is written after the reply
                rows = await admin.fetch(
                    """SELECT outcome, reply_code, error, vaultbox_id, email_id
                         FROM email_processing_logs WHERE recipient = 'counted@vault.test'
                          AND outcome = 'tempfail'"""
                )
                if rows:
                    break
                await asyncio.sleep(0.1)
            _, retried = await deliver(port_of(cfg), ["counted@vault.test"], message)
    finally:
        await admin.close()
    assert len(rows) == 1
    assert rows[0]["reply_code"] == "451" and rows[0]["vaultbox_id"] == box.id
    assert rows[0]["email_id"] is None and "permission denied" in rows[0]["error"]
    assert sample("encimap_deliveries_total", outcome="tempfail") == before + 1
    # Nothing of the failed attempt was stored; the retry is stored once, not a duplicate.
    assert retried[0].startswith("250 2.0.0")
    stored = await stored_messages(databases, box)
    assert len(stored) == stored_before + 1
    assert stored[-1]["message_id"] == "<tempfail@sender.test>"


def test_certificate_cache_rechecks_validity_and_remembers_refusals(tmp_path: Path):
    pem, _key = smime.generate_certificate("cached@vault.test", days=30)
    text = pem.decode()
    certificate = smime.load_certificate(pem)
    cache = CertificateCache()
    inside = certificate.not_valid_before_utc + timedelta(days=1)
    after = certificate.not_valid_after_utc + timedelta(seconds=1)

    usable = cache.usable([text], "Cached@Vault.test", allow_address_mismatch=False, now=inside)
    assert usable == [certificate]
    assert cache.usable([text], "cached@vault.test", allow_address_mismatch=False, now=after) == []
    before = certificate.not_valid_before_utc - timedelta(seconds=1)
    assert cache.usable([text], "cached@vault.test", allow_address_mismatch=False, now=before) == []
    # Another address: refused, unless mismatches are allowed.
    assert cache.usable([text], "other@vault.test", allow_address_mismatch=False, now=inside) == []
    allowed = cache.usable([text], "other@vault.test", allow_address_mismatch=True, now=inside)
    assert allowed == [certificate]
    assert cache.usable(["not a certificate"], "cached@vault.test",
                        allow_address_mismatch=False, now=inside) == []  # fmt: skip
