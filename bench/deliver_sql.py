"""PostgreSQL CPU per intake delivery: the SQL of migration 006 against the current migrations.

    python -m bench.deliver_sql [--messages 3000] [--size 10240] [--rounds 6]

Runs a private PostgreSQL cluster with two databases: `baseline` migrated up to 006 only
(`encimap_deliver` as first written), `current` migrated to the end. In each, one connection
as the intake role calls `store.messages.deliver` (one ~14 KB S/MIME message with its
mimeinfo, a new Message-ID each time) and `store.recipients.find_recipient`, alternating between
the databases in rounds so that load from elsewhere on the machine hits both alike. The CPU is
the serving backend's own (/proc/<pid>/schedstat, ns), so client and WAL writer are not in it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import asyncpg

from encimap import db, mimeinfo, smime
from encimap.pgcluster import LocalCluster
from encimap.store import certificates, messages, recipients, vaultboxes

ADDRESS = "bench@vault.test"
BASELINE_VERSION = 6  # the last migration of the baseline database


def backend_cpu_ms(pid: int) -> float:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e6


async def prepare(url: str, last_version: int | None, cert_pem: bytes) -> None:
    conn = await asyncpg.connect(url)
    try:
        for migration in db.available_migrations("encimap"):
            if last_version is None or migration.version <= last_version:
                async with conn.transaction():
                    await conn.execute(migration.path.read_text())
        box = await vaultboxes.create_vaultbox(
            conn, user_id=uuid.uuid4(), alias="bench", domain="vault.test", name=None
        )
        await certificates.add_certificate(
            conn,
            vaultbox_id=box.id,
            certificate_type="public",
            pem_content=cert_pem.decode(),
            info=smime.check_certificate(cert_pem, ADDRESS),
        )
    finally:
        await conn.close()


def sample_message(cert_pem: bytes, size: int) -> tuple[bytes, mimeinfo.MessageInfo, str]:
    plain = EmailMessage()
    plain["From"] = "sender@bench.test"
    plain["To"] = ADDRESS
    plain["Subject"] = "quarterly figures"
    plain["Message-ID"] = "<sample@bench.test>"
    plain["Date"] = "Mon, 01 Jan 2024 10:00:00 +0000"
    plain.set_content(("The figures are attached below. " * (size // 32 + 1))[:size])
    result = smime.encrypt_message(bytes(plain), [cert_pem])
    return result.message, mimeinfo.describe(result.message), result.algorithm or "none"


class Subject:
    """One database, one intake-role connection, the CPU its backend used per operation."""

    def __init__(self, name: str, url: str) -> None:
        self.name, self.url = name, url
        self.deliver_ms = self.recipient_ms = 0.0
        self.delivered = self.looked_up = 0

    async def open(self) -> None:
        self.conn = await asyncpg.connect(self.url, server_settings={"role": "encimap_intake"})
        self.pid = await self.conn.fetchval("SELECT pg_backend_pid()")
        found = await recipients.find_recipient(self.conn, [ADDRESS])
        assert found is not None
        self.vaultbox_id = found.vaultbox.id

    async def deliver(self, count: int, body: bytes, info: mimeinfo.MessageInfo, alg: str) -> None:
        started = backend_cpu_ms(self.pid)
        for _ in range(count):
            message_id = f"<{uuid.uuid4()}@bench.test>"
            copy = messages.NewMessage(
                vaultbox_id=self.vaultbox_id,
                recipient=ADDRESS,
                sender="sender@bench.test",
                message_id=message_id,
                body=body,
                body_sha256=hashlib.sha256(message_id.encode()).hexdigest(),
                size_original=len(body),
                encryption_method=alg,
                certificate_fingerprints=["ab" * 32],
                subject_encrypted="quarterly figures",
                internal_date=datetime.now(UTC),
                info=info,
            )
            delivered = await messages.deliver(
                self.conn, copy, queue_id="4ABCDEF", duplicate_window_seconds=3600, duration_ms=5
            )
            assert not delivered.duplicate
        self.deliver_ms += backend_cpu_ms(self.pid) - started
        self.delivered += count

    async def find(self, count: int) -> None:
        addresses = [ADDRESS, "bench+tag@vault.test"]
        started = backend_cpu_ms(self.pid)
        for _ in range(count):
            await recipients.find_recipient(self.conn, addresses[::-1])
        self.recipient_ms += backend_cpu_ms(self.pid) - started
        self.looked_up += count


async def run(args: argparse.Namespace, cluster: LocalCluster) -> None:
    cert_pem, _key = smime.generate_certificate(ADDRESS)
    subjects = []
    for name, last_version in (("baseline", BASELINE_VERSION), ("current", None)):
        cluster.create_database(f"deliver_{name}")
        await prepare(cluster.url(f"deliver_{name}"), last_version, cert_pem)
        subjects.append(Subject(name, cluster.url(f"deliver_{name}")))
    body, info, alg = sample_message(cert_pem, args.size)
    print(f"stored body {len(body)} bytes, {args.messages} deliveries per database")
    for subject in subjects:
        await subject.open()
        await subject.deliver(50, body, info, alg)  # warm caches and plans
        await subject.find(50)
        subject.deliver_ms = subject.recipient_ms = 0.0
        subject.delivered = subject.looked_up = 0
    per_round = args.messages // args.rounds
    for index in range(args.rounds):
        for subject in subjects if index % 2 == 0 else subjects[::-1]:
            await subject.deliver(per_round, body, info, alg)
            await subject.find(per_round)
    for subject in subjects:
        await subject.conn.close()
    baseline, current = subjects
    for label, attr, count in (
        ("deliver", "deliver_ms", "delivered"),
        ("find_recipient", "recipient_ms", "looked_up"),
    ):
        before = getattr(baseline, attr) / getattr(baseline, count)
        after = getattr(current, attr) / getattr(current, count)
        print(
            f"{label:15} backend CPU ms/call: baseline {before:.3f}  current {after:.3f}"
            f"  ratio {after / before:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=9000, help="plaintext body bytes")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-deliver-") as directory:
        cluster = LocalCluster(Path(directory) / "pg")
        cluster.start()
        try:
            asyncio.run(run(args, cluster))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
