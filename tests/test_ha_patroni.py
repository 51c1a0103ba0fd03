"""encimap against a Patroni cluster (etcd + three PostgreSQL 15 nodes, synchronous mode) and
PgBouncer in transaction mode, all real and on loopback.

The services get multi-host URLs (`target_session_attrs=read-write`) and are never restarted:
across a `patronictl failover` and a SIGKILL of the primary's postmaster, every message that
got a 250 is stored exactly once on the new primary, the others got a 4xx, and deliveries,
IMAP sessions and logins carry on once a standby is promoted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from encimap.pgcluster import free_port
from encimap.store import credentials, sending
from tests.imap_support import RawClient, make_box
from tests.intake_support import LMTPClient, add_certificate
from tests.patroni_support import (
    PatroniCluster,
    PgBouncer,
    flood_message,
    lmtp_flood,
    missing_programs,
    prepare_databases,
    stored_counts,
)
from tests.service_support import http_get, running_service
from tests.submission_helpers import login as submission_login
from tests.submission_helpers import message, sink, submission
from tests.support import (
    Databases,
    make_config,
    make_motorblock,
    make_vaultbox,
    run_cli,
    write_config_file,
)

pytestmark = [
    pytest.mark.ha,
    pytest.mark.skipif(
        bool(missing_programs()),
        reason="the Patroni HA suite needs Debian's patroni, etcd-server and pgbouncer "
        f"(scripts/system-deps.sh installs them); missing: {', '.join(missing_programs())}",
    ),
]

# Enough to keep the flood going well past the promotion on a 2-core machine.
FLOOD = int(os.environ.get("ENCIMAP_HA_FLOOD", "2000"))
CONNECTIONS = 4


@pytest.fixture(scope="module")
def ha() -> Iterator[PatroniCluster]:
    cluster = PatroniCluster.create()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def ha_databases(ha: PatroniCluster) -> Databases:
    return asyncio.run(prepare_databases(ha, "motorical_ha", "encimap_ha"))


def ha_config(databases: Databases, tls_files, **sections):
    ports = {name: free_port() for name in ("intake", "imap", "imaps", "metrics")}
    settings = {
        # A failover must not hold a delivery for long: fail fast, answer 451, retry later.
        "database": {"connect_timeout": 2.0, "command_timeout": 5.0},
        "intake": {"listen": f"127.0.0.1:{ports['intake']}", "hostname": "mx.test"},
        "imap": {
            "listen": f"127.0.0.1:{ports['imap']}",
            "tls_listen": f"127.0.0.1:{ports['imaps']}",
        },
        "metrics": {"intake": f"127.0.0.1:{ports['metrics']}"},
    }
    for section, values in sections.items():
        settings[section] = {**settings.get(section, {}), **values}
    return make_config(databases, tls_files, **settings), ports


async def _flood_across(ha: PatroniCluster, databases: Databases, tmp_path: Path, tls_files, fault):
    box = await make_vaultbox(databases, f"flood{fault.__name__[:4]}@ha.test", kinds=())
    await add_certificate(databases, box.vaultbox, tmp_path)
    cfg, ports = ha_config(databases, tls_files)
    ids = [f"{fault.__name__}-{number}@flood.test" for number in range(FLOOD)]
    async with running_service(cfg, "intake"):
        started = asyncio.Event()
        flood = asyncio.create_task(
            lmtp_flood(
                ports["intake"], box.vaultbox.address, ids, CONNECTIONS, third_answered=started
            )
        )
        await started.wait()  # a third of the messages answered
        old = await asyncio.to_thread(fault, ha)
        new = await asyncio.to_thread(ha.wait_new_leader, old)
        promoted_at = time.monotonic()
        outcomes = await flood

        codes = {outcome.code for outcome in outcomes}
        assert codes <= {250, 451}, codes
        accepted = {o.message_id for o in outcomes if o.code == 250}
        refused = {o.message_id for o in outcomes if o.code != 250}
        assert refused, "the failover went unnoticed: the test proves nothing"
        assert any(o.code == 250 and o.at > promoted_at for o in outcomes), "no 250 after"

        counts = await stored_counts(databases, box.vaultbox.id)
        assert {mid for mid in accepted if counts.get(mid) != 1} == set()
        assert all(counts.get(mid, 0) <= 1 for mid in refused)

        # The intake's /readyz follows too: its pool is on the new primary.
        status, body = await asyncio.to_thread(
            http_get, f"http://127.0.0.1:{ports['metrics']}/readyz"
        )
        assert status == 200, body
        assert f"encimap/encimap_intake: ok, primary {new.address} (" in body
        metrics = (
            await asyncio.to_thread(http_get, f"http://127.0.0.1:{ports['metrics']}/metrics")
        )[1]
        assert re.search(
            r'encimap_db_reconnects_total\{database="encimap",reason="\w+"\} [1-9]', metrics
        )

        # So does `encimap check`.
        config_file = write_config_file(tmp_path / "check.toml", databases)
        checked = (await asyncio.to_thread(run_cli, "check", config_file=config_file)).stdout
        assert f"database encimap: reachable at {new.address} (primary)" in checked, checked

        # What got a 4xx is retried, as the MTA's queue would: now every message is stored
        # exactly once (a 451 whose commit had reached the standby is a duplicate, not a copy).
        retried = await lmtp_flood(ports["intake"], box.vaultbox.address, sorted(refused), 2)
        assert {o.code for o in retried} == {250}
    counts = await stored_counts(databases, box.vaultbox.id)
    assert counts == dict.fromkeys(ids, 1)
    await asyncio.to_thread(ha.wait_healthy)
    return outcomes


def failover(ha: PatroniCluster):
    return ha.failover()[0]


def kill_postmaster(ha: PatroniCluster):
    return ha.kill_primary_postmaster()


async def test_lmtp_flood_across_patronictl_failover(ha, ha_databases, tmp_path, tls_files):
    await _flood_across(ha, ha_databases, tmp_path, tls_files, failover)


async def test_lmtp_flood_across_sigkill_of_the_primary(ha, ha_databases, tmp_path, tls_files):
    await _flood_across(ha, ha_databases, tmp_path, tls_files, kill_postmaster)


async def _deliver(port: int, address: str, message_id: str) -> str:
    client = await LMTPClient.connect(port)
    try:
        await client.command("LHLO t.test")
        rcpt, data = await client.transaction("a@example.org", [address], flood_message(message_id))
        return (data or rcpt)[0]
    finally:
        await client.close()


async def test_imap_submission_and_logins_follow_the_primary(
    ha, ha_databases, tmp_path, tls_files, tls_ca
):
    box = await make_box(ha_databases, "idle@ha.test", tmp_path)
    motorblock = await make_motorblock(
        ha_databases, username="mb-ha", password="ha-pw", domain="ha-send.test", rate_limit=1000
    )
    with sink() as (controller, handler):
        cfg, ports = ha_config(
            ha_databases,
            tls_files,
            submission={
                "listen": f"127.0.0.1:{free_port()}",
                "relay": f"127.0.0.1:{controller.port}",
            },
        )
        async with (
            running_service(cfg, "intake"),
            running_service(cfg, "imap"),
            running_service(cfg, "submission"),
        ):
            submission_port = int(str(cfg.submission.listen).rpartition(":")[2])
            await _imap_and_submission_across_failover(
                ha, ha_databases, box, ports, submission_port, tls_ca
            )
        relayed = [m.rcpt_tos for m in handler.messages]
        assert relayed == [["before@x.test"], ["after@x.test"]]
    # Both relayed recipients are counted on the new primary, the one sent just before the
    # primary died too. (Recipients given up with RSET are released; a release that failed in
    # the failover stays counted: the quota errs on the safe side.)
    conn = await ha_databases.connect()
    try:
        assert await sending.sent_in_window(conn, f"motorblock:{motorblock.id}") >= 2
    finally:
        await conn.close()
    await asyncio.to_thread(ha.wait_healthy)


async def _imap_and_submission_across_failover(
    ha, ha_databases, box, ports, submission_port, tls_ca
):
    assert (await _deliver(ports["intake"], "idle@ha.test", "first@t")).startswith("250")
    idler = await RawClient.connect(ports["imaps"], tls_ca)
    worker = await RawClient.connect(ports["imaps"], tls_ca)
    for client in (idler, worker):
        await client.login(box)
        assert (await client.command("S", "SELECT INBOX"))[-1].startswith(b"S OK")
    await idler.send(b"I IDLE\r\n")
    assert (await idler.line()).startswith(b"+ ")
    smtp = await asyncio.to_thread(submission_login, submission_port, tls_ca, "mb-ha", "ha-pw")

    def rcpt() -> tuple[int, bytes]:
        """One recipient in a fresh transaction (the sending quota is counted at RCPT)."""
        smtp.rset()
        assert smtp.docmd("MAIL", "FROM:<news@ha-send.test>")[0] == 250
        return smtp.docmd("RCPT", "TO:<after@x.test>")

    # Acknowledged just before the primary dies: a flag change, an APPEND, a sent message.
    assert (await worker.command("T", "STORE 1 +FLAGS (\\Flagged)"))[-1].startswith(b"T OK")
    appended = flood_message("appended@t")
    await worker.send(b"A APPEND INBOX {%d+}\r\n" % len(appended) + appended + b"\r\n")
    assert (await worker.until("A"))[-1].startswith(b"A OK"), "APPEND failed"
    before = message("news@ha-send.test", ["before@x.test"])
    await asyncio.to_thread(smtp.sendmail, "news@ha-send.test", ["before@x.test"], before)

    old = await asyncio.to_thread(ha.kill_primary_postmaster)
    waiting = asyncio.create_task(asyncio.to_thread(ha.wait_new_leader, old))
    # STATUS reads the database every time, RCPT counts the sending quota there: during
    # the failover they get NO [UNAVAILABLE] and 451 4.3.0, and within seconds of the
    # promotion OK and 250 again, in the same sessions.
    replies: list[bytes] = []
    codes: list[int] = []
    deadline = time.monotonic() + 60
    while not (waiting.done() and replies and replies[-1] == b"OK" and codes[-1] == 250):
        assert time.monotonic() < deadline, f"no recovery: {replies[-5:]} {codes[-5:]}"
        tag = f"C{len(replies)}"
        reply = (await worker.command(tag, "STATUS INBOX (MESSAGES)"))[-1]
        assert reply.startswith((f"{tag} OK".encode(), f"{tag} NO [UNAVAILABLE]".encode()))
        replies.append(reply.split(b" ")[1])
        code, text = await asyncio.to_thread(rcpt)
        assert code == 250 or (code, text[:5]) == (451, b"4.3.0"), (code, text)
        codes.append(code)
        await asyncio.sleep(0.05)
    await waiting
    assert b"NO" in replies, replies
    assert 451 in codes, codes
    assert (await asyncio.to_thread(smtp.data, message("news@ha-send.test", ["after@x.test"])))[
        0
    ] == 250
    await asyncio.to_thread(smtp.quit)
    # They survived on the new primary (synchronous replication).
    fetched = await worker.command("F", "FETCH 1:2 (FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert fetched[-1].startswith(b"F OK"), fetched
    assert b"\\Flagged" in b"".join(fetched) and b"appended@t" in b"".join(fetched), fetched

    # IDLE hears mail delivered after the failover (its LISTEN is on the new primary).
    deadline = time.monotonic() + 15
    while not (await _deliver(ports["intake"], "idle@ha.test", "after@t")).startswith("250"):
        assert time.monotonic() < deadline, "intake did not recover"
        await asyncio.sleep(0.2)
    while True:
        line = await asyncio.wait_for(idler.reader.readline(), 15)
        if re.match(rb"\* \d+ EXISTS", line):
            break
    await idler.send(b"DONE\r\n")
    assert (await idler.until("I"))[-1].startswith(b"I OK")

    # A credential revoked after the failover is refused at the next login.
    fresh = await RawClient.connect(ports["imaps"], tls_ca)
    await fresh.login(box)
    await fresh.close()
    conn = await ha_databases.connect()
    try:
        await credentials.revoke_credentials(conn, box.username)
    finally:
        await conn.close()
    refused = await RawClient.connect(ports["imaps"], tls_ca)
    reply = await refused.command("L", f'LOGIN "{box.username}" "{box.password}"')
    assert reply[-1].startswith(b"L NO [AUTHENTICATIONFAILED]"), reply
    for client in (idler, worker, refused):
        await client.close()


async def test_everything_through_pgbouncer_transaction_mode(
    ha, ha_databases, tmp_path, tls_files, tls_ca
):
    leader = ha.leader()
    assert leader is not None
    bouncer = PgBouncer(ha.base / "pgbouncer")
    bouncer.start(leader.address, ["motorical_ha", "encimap_ha"])
    try:
        box = await make_box(ha_databases, "bounce@ha.test", tmp_path)
        await make_motorblock(
            ha_databases,
            username="mb-bounce",
            password="bounce-pw",
            domain="bounce.test",
            rate_limit=2,
        )
        pooled = dataclasses.replace(
            ha_databases,
            motorical_url=bouncer.url("motorical_ha"),
            encimap_url=bouncer.url("encimap_ha"),
        )
        with sink() as (controller, handler):
            cfg, ports = ha_config(
                pooled,
                tls_files,
                database={
                    "statement_cache_size": 0,
                    "set_role": False,
                    "motorical_listen_url": ha_databases.motorical_url,
                    "encimap_listen_url": ha_databases.encimap_url,
                },
                submission={"listen": "127.0.0.1:0", "relay": f"127.0.0.1:{controller.port}"},
            )
            async with running_service(cfg, "intake"), running_service(cfg, "imap"):
                client = await RawClient.connect(ports["imaps"], tls_ca)
                await client.login(box)
                assert (await client.command("S", "SELECT INBOX"))[-1].startswith(b"S OK")
                await client.send(b"I IDLE\r\n")
                assert (await client.line()).startswith(b"+ ")
                for number in range(3):
                    reply = await _deliver(ports["intake"], "bounce@ha.test", f"b{number}@t")
                    assert reply.startswith("250"), reply
                # The NOTIFY of a delivery through PgBouncer reaches IDLE's direct LISTEN.
                while not re.match(rb"\* \d+ EXISTS", await client.line()):
                    pass
                await client.send(b"DONE\r\n")
                assert (await client.until("I"))[-1].startswith(b"I OK")
                fetched = await client.command("F", "FETCH 1:3 (BODY.PEEK[])")
                assert fetched[-1].startswith(b"F OK")
                assert sum(line.startswith(b"* ") for line in fetched) == 3
                await client.close()
            async with submission(cfg) as service:
                port = service.addresses[0][1]

                def send(recipient: str) -> int:
                    with submission_login(port, tls_ca, "mb-bounce", "bounce-pw") as smtp:
                        try:
                            smtp.sendmail(
                                "news@bounce.test",
                                [recipient],
                                message("news@bounce.test", [recipient]),
                            )
                        except smtplib.SMTPRecipientsRefused as refused:
                            return refused.recipients[recipient][0]
                        return 250

                codes = [await asyncio.to_thread(send, f"r{n}@x.test") for n in range(3)]
                assert codes == [250, 250, 451]
            assert len(handler.messages) == 2
        # The pools' connections came through PgBouncer.
        log = (bouncer.directory / "pgbouncer.log").read_text()
        for database in ("motorical_ha", "encimap_ha"):
            assert f"login attempt: db={database} user=postgres" in log
    finally:
        bouncer.stop()


async def test_logins_from_standbys_follow_a_revocation_once_replayed(
    ha, ha_databases, tmp_path, tls_files, tls_ca
):
    box = await make_box(ha_databases, "standby@ha.test", tmp_path)
    cfg, ports = ha_config(
        ha_databases,
        tls_files,
        database={"logins_session_attrs": "standby"},
        metrics={"imap": f"127.0.0.1:{free_port()}"},
    )
    async with running_service(cfg, "imap"):
        client = await RawClient.connect(ports["imaps"], tls_ca)
        await client.login(box)
        await client.close()
        status, body = await asyncio.to_thread(
            http_get, f"http://127.0.0.1:{cfg.metrics.imap.rpartition(':')[2]}/readyz"
        )
        assert status == 200, body
        assert re.search(r"encimap/encimap_auth/logins: ok, standby 127\.0\.0\.1:\d+ ", body), body
        assert "encimap/encimap_imap: ok, primary" in body

        conn = await ha_databases.connect()
        try:
            await credentials.revoke_credentials(conn, box.username)
        finally:
            await conn.close()
        # Refused as soon as the standby has replayed the revocation (milliseconds on loopback;
        # bench.failover --revocation measures it), never accepted after that.
        replies = []
        while not replies or not replies[-1].startswith(b"L NO"):
            assert len(replies) < 200, replies[-3:]
            client = await RawClient.connect(ports["imaps"], tls_ca)
            reply = await client.command("L", f'LOGIN "{box.username}" "{box.password}"')
            replies.append(reply[-1])
            await client.close()
        assert replies[-1].startswith(b"L NO [AUTHENTICATIONFAILED]"), replies[-1]
        for _ in range(3):
            client = await RawClient.connect(ports["imaps"], tls_ca)
            reply = await client.command("L", f'LOGIN "{box.username}" "{box.password}"')
            assert reply[-1].startswith(b"L NO [AUTHENTICATIONFAILED]"), reply
            await client.close()
