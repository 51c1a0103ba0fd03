"""Installing into the running platform: databases shaped like ../shared/seed/ (schema v2.1)
with data the platform wrote, then `encimap db migrate`, then every service on that data.

The module builds one such platform: a user, MotorBlocks (one with a NULL domain), vaultboxes,
both credential kinds (one legacy IMAP credential without a vaultbox), public and private
certificate rows, and legacy stored mail (TEXT bodies, no mailbox, UID or flags)."""

from __future__ import annotations

import asyncio
import imaplib
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import bcrypt
import pytest
from cryptography.hazmat.primitives import hashes

from encimap import migrations
from encimap.pgcluster import LocalCluster
from encimap.store import adoption
from tests.imap_support import imap_config, login, ports, running_imap
from tests.intake_support import LMTPClient, intake_config, openssl_decrypt, port_of, running_intake
from tests.platform_support import insert_vaultbox, run_platform_statements, seeded_databases
from tests.postfix_support import reachable_dir
from tests.service_support import running_service
from tests.smime_support import Identity, make_identity
from tests.submission_helpers import login as submission_login
from tests.submission_helpers import message, sink, starttls_port, submission
from tests.support import Databases, make_config, run_cli, write_config_file
from tests.test_auth_engine import open_engine
from tests.test_authsocket import Client as AuthClient
from tests.test_authsocket import plain, socket_config

PASSWORD = "correct horse"
DOMAIN = "platform.test"


@dataclass
class Platform:
    databases: Databases
    config_file: Path
    identity: Identity  # the key of box1's certificate, held by the test only
    box1: uuid.UUID
    box2: uuid.UUID
    legacy: list[bytes]  # box1's legacy mail in processed_at order


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def _legacy_message(number: int, identity: Identity, directory: Path) -> bytes:
    """What the old service stored: an S/MIME message as text, CRLF line ends."""
    plain = directory / f"legacy{number}.eml"
    plain.write_bytes(f"Subject: legacy {number}\r\n\r\nold mail {number}\r\n".encode())
    envelope = subprocess.run(
        ["openssl", "smime", "-encrypt", "-aes256", "-in", str(plain), str(identity.cert_path)],
        capture_output=True,
        check=True,
    ).stdout.replace(b"\r\n", b"\n")
    headers = (
        f"From: Old Sender <old{number}@sender.test>\nTo: one@{DOMAIN}\n"
        f"Subject: legacy {number}\nMessage-ID: <legacy{number}@sender.test>\n"
    ).encode()
    return (headers + envelope).replace(b"\n", b"\r\n")


async def _platform_rows(databases: Databases, directory: Path) -> Platform:
    identity = make_identity(directory, f"one@{DOMAIN}")
    motorical = await databases.connect("motorical")
    encimap = await databases.connect("encimap")
    try:
        user = await motorical.fetchval(
            "INSERT INTO users (email, password_hash) VALUES ('owner@platform.test', $1) "
            "RETURNING id",
            _hash("web"),
        )
        other = await motorical.fetchval(
            "INSERT INTO users (email, password_hash) VALUES ('other@platform.test', $1) "
            "RETURNING id",
            _hash("web"),
        )
        await motorical.execute(
            "INSERT INTO domains (user_id, domain, verification_status) "
            "VALUES ($1, 'verified.test', 'verified'), ($1, 'pending.test', 'pending')",
            user,
        )
        await motorical.execute(
            "INSERT INTO motor_blocks (user_id, username, password_hash) "
            "VALUES ($1, 'mb-null', $2)",
            user,
            _hash(PASSWORD),
        )
        await motorical.execute(
            "INSERT INTO motor_blocks (user_id, username, password_hash, domain) "
            "VALUES ($1, 'mb-domain', $2, 'mb.test')",
            user,
            _hash(PASSWORD),
        )
        box1 = await insert_vaultbox(encimap, user, "one", DOMAIN)
        box2 = await insert_vaultbox(encimap, other, "two", DOMAIN)
        await encimap.execute("UPDATE vaultboxes SET smtp_enabled = true WHERE id = $1", box1.id)
        await encimap.execute(
            "INSERT INTO vaultbox_smtp_credentials (vaultbox_id, username, password_hash) "
            "VALUES ($1, 'one-login', $2)",
            box1.id,
            _hash(PASSWORD),
        )
        await encimap.execute(
            "INSERT INTO imap_app_credentials (user_id, username, vaultbox_id, password_hash) "
            "VALUES ($1, 'one-login', $2, $3)",
            user,
            box1.id,
            _hash(PASSWORD),
        )
        # A legacy credential: no vaultbox named, its user has exactly one.
        await encimap.execute(
            "INSERT INTO imap_app_credentials (user_id, username, password_hash) "
            "VALUES ($1, 'two-legacy', $2)",
            other,
            _hash(PASSWORD),
        )
        await encimap.execute(
            "INSERT INTO certificates (vaultbox_id, certificate_type, pem_content, friendly_name) "
            "VALUES ($1, 'public', $2, 'laptop'), ($1, 'private', 'PRIVATE KEY MATERIAL', 'x')",
            box1.id,
            identity.pem.decode(),
        )
        legacy = [_legacy_message(n, identity, directory) for n in range(3)]
        # Inserted out of order: UIDs must follow processed_at.
        for number in (2, 0, 1):
            await encimap.execute(
                """INSERT INTO encrypted_emails (vaultbox_id, message_id, sender, recipient,
                                                 body_encrypted, processed_at)
                   VALUES ($1, $2, $3, $4, $5, now() - make_interval(hours => 10 - $6))""",
                box1.id,
                f"<legacy{number}@sender.test>",
                f"old{number}@sender.test",
                box1.address,
                legacy[number].decode(),
                number,
            )
    finally:
        await motorical.close()
        await encimap.close()
    config_file = write_config_file(directory / "encimap.toml", databases)
    return Platform(databases, config_file, identity, box1.id, box2.id, legacy)


@pytest.fixture(scope="module")
def platform(pg_cluster: LocalCluster, tmp_path_factory) -> Platform:
    directory = tmp_path_factory.mktemp("platform")
    tag = uuid.uuid4().hex[:8]

    async def build() -> Platform:
        databases = await seeded_databases(pg_cluster, f"plat_mot_{tag}", f"plat_enc_{tag}")
        return await _platform_rows(databases, directory)

    built = asyncio.run(build())
    plan = run_cli("db", "migrate", "--plan", config_file=built.config_file)
    assert plan.returncode == 0, plan.stderr
    assert "002_encimap_tables would run:" in plan.stdout
    assert "3 stored messages are placed in their vaultbox's INBOX" in plan.stdout
    first = run_cli("db", "migrate", config_file=built.config_file)
    assert first.returncode == 0, first.stderr
    assert "encimap: placed 3/3 stored messages" in first.stdout
    again = run_cli("db", "migrate", config_file=built.config_file)
    assert again.stdout.splitlines() == ["motorical: nothing to apply", "encimap: nothing to apply"]
    return built


async def test_plan_changes_nothing(pg_cluster: LocalCluster, tmp_path: Path):
    tag = uuid.uuid4().hex[:8]
    databases = await seeded_databases(pg_cluster, f"plan_mot_{tag}", f"plan_enc_{tag}")
    built = await _platform_rows(databases, tmp_path)
    result = run_cli("db", "migrate", "--plan", config_file=built.config_file)
    assert result.returncode == 0, result.stderr
    assert "ALTER TABLE encrypted_emails ALTER COLUMN message_id TYPE text" in result.stdout
    conn = await databases.connect()
    try:
        assert await conn.fetchval("SELECT to_regclass('mailboxes')") is None
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()


async def test_platform_statements_still_run(platform: Platform):
    await run_platform_statements(platform.databases)


async def test_legacy_mail_is_placed_in_processed_at_order(platform: Platform):
    conn = await platform.databases.connect()
    try:
        rows = await conn.fetch(
            """SELECT e.uid, e.body, e.body_encrypted, e.size_bytes, e.envelope, m.name
                 FROM encrypted_emails e JOIN mailboxes m ON m.id = e.mailbox_id
                WHERE e.vaultbox_id = $1 ORDER BY e.uid""",
            platform.box1,
        )
    finally:
        await conn.close()
    assert [row["uid"] for row in rows] == [1, 2, 3]
    assert {row["name"] for row in rows} == {"INBOX"}
    assert [row["body_encrypted"].encode() for row in rows] == platform.legacy
    assert all(row["body"] is None for row in rows)  # not copied
    assert [row["size_bytes"] for row in rows] == [len(m) for m in platform.legacy]
    assert all('"legacy' in row["envelope"] for row in rows)


async def test_certificates_are_completed_and_private_rows_unreadable(platform: Platform):
    conn = await platform.databases.connect()
    try:
        row = await conn.fetchrow(
            "SELECT fingerprint_sha256, key_algorithm, not_after FROM certificates "
            "WHERE vaultbox_id = $1 AND certificate_type = 'public'",
            platform.box1,
        )
        expected = platform.identity.certificate.fingerprint(hashes.SHA256()).hex()
        assert row["fingerprint_sha256"] == expected
        assert row["key_algorithm"] == "rsa-2048"
        for role in ("encimap_auth", "encimap_intake", "encimap_imap"):
            await conn.execute(f"SET ROLE {role}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("SELECT pem_content FROM certificates")
            await conn.execute("RESET ROLE")
    finally:
        await conn.close()


async def test_logins_work_through_the_auth_engine(platform: Platform):
    engine, pools = await open_engine(make_config(platform.databases))
    try:
        nulled = await engine.authenticate("mb-null", PASSWORD, service="smtp")
        assert nulled.sender_domains == ("verified.test",)
        assert nulled.may_send_as("a@verified.test") and not nulled.may_send_as("a@pending.test")
        domained = await engine.authenticate("mb-domain", PASSWORD, service="smtp")
        assert domained.sender_domains == ("mb.test",)
        smtp = await engine.authenticate("one-login", PASSWORD, service="smtp")
        assert smtp.vaultbox_id == platform.box1
        legacy = await engine.authenticate("two-legacy", PASSWORD, service="imap")
        assert legacy.vaultbox_id == platform.box2
        # A credential the platform inserts now logs in at once.
        conn = await platform.databases.connect()
        try:
            await conn.execute(
                "INSERT INTO imap_app_credentials (user_id, username, vaultbox_id, password_hash) "
                "SELECT user_id, 'two-new', id, $2 FROM vaultboxes WHERE id = $1",
                platform.box2,
                _hash(PASSWORD),
            )
        finally:
            await conn.close()
        fresh = await engine.authenticate("two-new", PASSWORD, service="imap")
        assert fresh.vaultbox_id == platform.box2
    finally:
        await engine.close()
        for pool in pools:
            await pool.close()


async def test_legacy_mail_over_imap_with_the_exact_bytes(platform: Platform, tls_files, tls_ca):
    cfg = imap_config(platform.databases, tls_files)
    async with running_imap(cfg):
        client = await asyncio.to_thread(_imap_login, ports(cfg)[0], tls_ca, "one-login")
        try:
            typ, data = await asyncio.to_thread(client.select, "INBOX")
            assert typ == "OK" and data == [b"3"]
            typ, data = await asyncio.to_thread(client.uid, "FETCH", "1:*", "(BODY.PEEK[])")
            bodies = [item[1] for item in data if isinstance(item, tuple)]
            assert bodies == platform.legacy
            typ, data = await asyncio.to_thread(client.uid, "FETCH", "2", "(ENVELOPE)")
            assert b'"legacy 1"' in data[0]
        finally:
            await asyncio.to_thread(client.logout)
        legacy = await asyncio.to_thread(_imap_login, ports(cfg)[0], tls_ca, "two-legacy")
        await asyncio.to_thread(legacy.logout)


def _imap_login(port: int, tls_ca, username: str) -> imaplib.IMAP4:
    account = type("Account", (), {"username": username, "password": PASSWORD})()
    return login(port, tls_ca, account)


async def test_delivery_to_existing_and_platform_inserted_vaultboxes(
    platform: Platform, tmp_path: Path
):
    cfg = intake_config(platform.databases)
    conn = await platform.databases.connect()
    async with running_intake(cfg):
        # The platform adds a vaultbox and its certificate while the intake runs.
        user = await conn.fetchval("SELECT user_id FROM vaultboxes WHERE id = $1", platform.box1)
        fresh = await insert_vaultbox(conn, user, "fresh", DOMAIN)
        identity = make_identity(tmp_path, fresh.address)
        await conn.execute(
            "INSERT INTO certificates (vaultbox_id, certificate_type, pem_content, friendly_name) "
            "VALUES ($1, 'public', $2, 'phone')",
            fresh.id,
            identity.pem.decode(),
        )
        client = await LMTPClient.connect(port_of(cfg))
        try:
            await client.command("LHLO test")
            rcpt, data = await client.transaction(
                "sender@outside.test",
                [f"one@{DOMAIN}", fresh.address],
                b"Subject: hello\r\nMessage-ID: <new@outside.test>\r\n\r\nnew mail\r\n",
            )
        finally:
            await client.close()
        assert [reply[:3] for reply in rcpt + data] == ["250"] * 4
    try:
        stored = await conn.fetch(
            "SELECT vaultbox_id, uid, body FROM encrypted_emails WHERE message_id = $1",
            "<new@outside.test>",
        )
    finally:
        await conn.close()
    by_box = {row["vaultbox_id"]: row for row in stored}
    assert by_box[platform.box1]["uid"] == 4  # after the three legacy messages
    assert by_box[fresh.id]["uid"] == 1
    assert b"new mail" in openssl_decrypt(bytes(by_box[fresh.id]["body"]), identity.key_path)
    assert b"new mail" in openssl_decrypt(
        bytes(by_box[platform.box1]["body"]), platform.identity.key_path
    )


async def test_private_keys_warned_about_then_purged(platform: Platform):
    check = run_cli("check", config_file=platform.config_file)
    assert "WARN private keys: 1 server-held private key row(s)" in check.stdout
    refused = run_cli("cert", "purge-private", config_file=platform.config_file)
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith("Confirm with --yes (stdin is not a terminal)")
    done = run_cli("cert", "purge-private", "--yes", config_file=platform.config_file)
    assert done.stdout.strip() == "deleted 1 private key row(s) of all vaultboxes"
    check = run_cli("check", config_file=platform.config_file)
    assert "private keys" not in check.stdout


async def test_submission_relays_for_an_existing_motorblock(platform: Platform, tls_files, tls_ca):
    """The MotorBlock without a domain sends from its user's verified domain."""
    with sink() as (controller, handler):
        cfg = make_config(
            platform.databases,
            tls_files,
            submission={"listen": "127.0.0.1:0", "relay": f"127.0.0.1:{controller.port}"},
        )
        async with submission(cfg) as service:

            def send() -> None:
                with submission_login(starttls_port(service), tls_ca, "mb-null", PASSWORD) as c:
                    c.sendmail(
                        "a@verified.test", ["x@y.test"], message("a@verified.test", ["x@y.test"])
                    )
                    refused = c.docmd("MAIL", "FROM:<a@pending.test>")
                    assert refused[0] == 553, refused

            await asyncio.to_thread(send)
    assert len(handler.messages) == 1


async def test_backfill_in_batches_while_an_imap_session_reads(
    pg_cluster: LocalCluster, tmp_path: Path, tls_files, tls_ca
):
    """2,000 legacy messages placed 250 at a time while a client keeps its INBOX selected:
    every command succeeds, the count only grows, and the UIDs end in processed_at order."""
    tag = uuid.uuid4().hex[:8]
    databases = await seeded_databases(pg_cluster, f"fill_mot_{tag}", f"fill_enc_{tag}")
    conn = await databases.connect()
    try:
        box = await insert_vaultbox(conn, uuid.uuid4(), "bulk", DOMAIN)
        await conn.execute(
            "INSERT INTO imap_app_credentials (user_id, username, vaultbox_id, password_hash) "
            "VALUES ($1, 'bulk-login', $2, $3)",
            box.user_id,
            box.id,
            _hash(PASSWORD),
        )
        await conn.execute(
            """INSERT INTO encrypted_emails (vaultbox_id, message_id, sender, recipient,
                                             body_encrypted, processed_at)
               SELECT $1, '<' || n || '@bulk.test>', 'a@b.test', $2,
                      'Subject: n' || n || E'\\r\\n\\r\\nbody\\r\\n',
                      timestamp '2024-01-01' + make_interval(secs => (n * 7919) % 2000)
                 FROM generate_series(1, 2000) AS n""",
            box.id,
            box.address,
        )
        for component in ("motorical", "encimap"):
            target = conn if component == "encimap" else await databases.connect(component)
            await migrations.migrate(target, component)
            if target is not conn:
                await target.close()
        assert await adoption.create_missing_mailboxes(conn) == 1
        assert await adoption.place_batch(conn, 100) == 100  # a run interrupted after one batch
        cfg = imap_config(databases, tls_files)
        progress: list[str] = []
        async with running_imap(cfg):
            client = await asyncio.to_thread(_imap_login, ports(cfg)[0], tls_ca, "bulk-login")
            seen = [int((await asyncio.to_thread(client.select, "INBOX"))[1][0])]
            filling = asyncio.create_task(adoption.adopt(conn, progress.append, batch=250))
            while not filling.done():
                typ, _ = await asyncio.to_thread(client.noop)
                assert typ == "OK"
                typ, data = await asyncio.to_thread(client.uid, "SEARCH", "ALL")
                assert typ == "OK"
                seen.append(len(data[0].split()))
            await filling
            typ, data = await asyncio.to_thread(client.uid, "FETCH", "1:*", "(BODY.PEEK[HEADER])")
            await asyncio.to_thread(client.logout)
        assert seen == sorted(seen) and seen[-1] <= 2000
        assert sum(line.startswith("placed ") for line in progress) == 8
        subjects = [item[1] for item in data if isinstance(item, tuple)]
        assert len(subjects) == 2000
        order = await conn.fetch(
            "SELECT uid FROM encrypted_emails WHERE vaultbox_id = $1 ORDER BY processed_at, id",
            box.id,
        )
        assert [row["uid"] for row in order] == list(range(1, 2001))
    finally:
        await conn.close()


async def test_logins_through_the_auth_socket(platform: Platform):
    directory = reachable_dir("encimap-adopt-auth-")
    try:
        async with running_service(socket_config(platform.databases, directory), "authsocket"):
            client = await AuthClient.connect(directory / "auth")
            try:
                await client.handshake()
                for number, (user, service) in enumerate(
                    [("mb-null", "smtp"), ("one-login", "smtp"), ("two-legacy", "imap")], 1
                ):
                    client.send(
                        "AUTH",
                        str(number),
                        "PLAIN",
                        f"service={service}",
                        "rip=127.0.0.1",
                        "secured",
                        f"resp={plain(user, PASSWORD)}",
                    )
                    assert await client.line() == ["OK", str(number), f"user={user}"]
            finally:
                await client.close()
    finally:
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()


async def test_mail_inserted_the_platform_way_is_placed_at_once(platform: Platform):
    conn = await platform.databases.connect()
    try:
        row = await conn.fetchrow(
            """INSERT INTO encrypted_emails (vaultbox_id, message_id, sender, recipient,
                                             body_encrypted)
               VALUES ($1, '<late@old.test>', 'a@old.test', 'two@platform.test',
                       'Subject: late')
               RETURNING id""",
            platform.box2,
        )
        placed = await conn.fetchrow(
            """SELECT m.name, e.uid, e.size_bytes FROM encrypted_emails e
                 JOIN mailboxes m ON m.id = e.mailbox_id WHERE e.id = $1""",
            row["id"],
        )
    finally:
        await conn.close()
    assert (placed["name"], placed["size_bytes"]) == ("INBOX", len("Subject: late"))
    assert placed["uid"] >= 1
