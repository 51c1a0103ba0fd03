"""Intake across a database failover: time from the primary's death to the first 250 on the
new primary, and the 4xx replies in between.

    python -m bench.failover [--runs 5] [--fault postmaster|node|switchover]
    python -m bench.failover --revocation 20

Starts etcd and three PostgreSQL 15 nodes under Patroni on loopback (tests/patroni_support.py:
synchronous_mode, loop_wait 1 s, ttl 10 s, primary_start_timeout 0) and the intake in this
process with a multi-host URL (connect_timeout 2 s). Four LMTP connections deliver small
messages back to back, pausing 100 ms after a 4xx as an MTA's queue would. Each run kills
the primary after 2 s of load:
- `postmaster`: SIGKILL of the primary's postmaster; Patroni notices within a loop and fails
  over at once (primary_start_timeout 0).
- `node`: SIGKILL of the primary's Patroni and postmaster together, as when its machine dies;
  the others wait for the leader key to expire (ttl).
- `switchover`: `patronictl failover` to the synchronous standby (planned).
Measured from the kill to the first 250 after the first 4xx (so from a server that took over),
and the 4xx count in between. After each run every 250 is checked to be stored exactly once;
then the cluster is made whole again (the old node rejoins) before the next run.

`--revocation N`: with the auth engine reading credentials from a standby
(`logins_session_attrs = "standby"`), the time from a revocation's commit on the primary to
the first refused login, and how many logins were still accepted in between, N times.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trustme

from encimap import db, logs
from encimap.auth import AuthEngine, AuthFailed
from encimap.pgcluster import free_port
from encimap.store import credentials
from tests.intake_support import LMTPClient, add_certificate
from tests.patroni_support import (
    PatroniCluster,
    flood_message,
    prepare_databases,
    stored_counts,
)
from tests.service_support import running_service
from tests.support import make_config, make_vaultbox

CONNECTIONS = 4
WARMUP = 2.0
AFTER = 2.0


@dataclasses.dataclass
class Run:
    recovery: float  # seconds from the kill to the first 250 after the first 4xx
    tempfails: int  # 4xx replies in between
    accepted: int  # 250 replies of the whole run


async def flood_until(
    port: int, address: str, prefix: str, stop: asyncio.Event, outcomes: list
) -> None:
    """Deliver until `stop`, appending (message id, reply code, monotonic time) to `outcomes`
    as the replies come."""

    async def connection(index: int) -> None:
        client = await LMTPClient.connect(port)
        await client.command("LHLO bench.test")
        number = 0
        try:
            while not stop.is_set():
                message_id = f"{prefix}-{index}-{number}@bench.test"
                number += 1
                rcpt, data = await client.transaction(
                    "bench@example.org", [address], flood_message(message_id)
                )
                code = int((data or rcpt)[0][:3])
                outcomes.append((message_id, code, time.monotonic()))
                if code >= 400:
                    await asyncio.sleep(0.1)
        finally:
            await client.close()

    await asyncio.gather(*(connection(index) for index in range(CONNECTIONS)))


def fault_action(cluster: PatroniCluster, fault: str):
    """Kill (or switch over) the primary; returns (old leader, the moment of its death)."""
    old = cluster.leader()
    assert old is not None
    if fault == "switchover":
        at = time.monotonic()
        cluster.failover()
    elif fault == "node":
        at = time.monotonic()
        assert old.process is not None
        old.process.send_signal(signal.SIGKILL)
        pid = old.postmaster_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
    else:
        at = time.monotonic()
        cluster.kill_primary_postmaster()
    return old, at


async def one_run(cluster, databases, port: int, address, vaultbox_id, number: int, fault: str):
    stop = asyncio.Event()
    outcomes: list[tuple[str, int, float]] = []
    flood = asyncio.create_task(flood_until(port, address, f"r{number}", stop, outcomes))
    await asyncio.sleep(WARMUP)
    old, died = await asyncio.to_thread(fault_action, cluster, fault)
    await asyncio.to_thread(cluster.wait_new_leader, old, 120)
    deadline = time.monotonic() + 60
    while True:
        await asyncio.sleep(0.2)
        after = sorted((at, code) for _id, code, at in list(outcomes) if at > died)
        first_fail = next((at for at, code in after if code >= 400), None)
        if first_fail is not None and any(c == 250 and at > first_fail for at, c in after):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("no 250 after the failover within 60 s")
    await asyncio.sleep(AFTER)
    stop.set()
    await flood
    after = sorted((at, code) for _id, code, at in outcomes if at > died)
    first_fail = next(at for at, code in after if code >= 400)
    recovered = next(at for at, code in after if code == 250 and at > first_fail)
    tempfails = sum(1 for at, code in after if code >= 400 and at < recovered)
    counts = await stored_counts(databases, vaultbox_id)
    accepted = [message_id for message_id, code, _at in outcomes if code == 250]
    wrong = [message_id for message_id in accepted if counts.get(message_id) != 1]
    if wrong:
        raise RuntimeError(f"acknowledged but not stored exactly once: {wrong[:5]}")
    if fault == "node":
        cluster.restart(old)
    await asyncio.to_thread(cluster.wait_healthy, 180)
    return Run(recovered - died, tempfails, len(accepted))


async def bench(runs: int, fault: str) -> list[Run]:
    cluster = PatroniCluster.create()
    work = Path(tempfile.mkdtemp(prefix="encimap-bench-failover-"))
    try:
        await asyncio.to_thread(cluster.start)
        databases = await prepare_databases(cluster, "motorical_bench", "encimap_bench")
        box = await make_vaultbox(databases, "bench@failover.test", kinds=())
        await add_certificate(databases, box.vaultbox, work)
        ca = trustme.CA()
        cert = ca.issue_cert("localhost")
        key, chain = work / "key.pem", work / "chain.pem"
        cert.private_key_pem.write_to_path(str(key))
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        port = free_port()
        cfg = make_config(
            databases,
            (chain, key),
            database={"connect_timeout": 2.0, "command_timeout": 5.0},
            intake={"listen": f"127.0.0.1:{port}", "hostname": "mx.bench"},
        )
        results = []
        async with running_service(cfg, "intake"):
            for number in range(runs):
                result = await one_run(
                    cluster, databases, port, box.vaultbox.address, box.vaultbox.id, number, fault
                )
                print(
                    f"run {number + 1}: first 250 on the new primary {result.recovery:.2f} s "
                    f"after the primary's death, {result.tempfails} x 4xx in between "
                    f"({result.accepted} x 250 in the run, each stored once)",
                    flush=True,
                )
                results.append(result)
        return results
    finally:
        await asyncio.to_thread(cluster.stop)
        shutil.rmtree(work, ignore_errors=True)


async def revocation_lag(samples: int) -> list[tuple[float, int]]:
    """(seconds from a revocation's commit on the primary to the first refused login, logins
    still accepted in between) for `samples` credentials, with the auth engine reading
    credentials from a standby (`logins_session_attrs = "standby"`)."""
    cluster = PatroniCluster.create()
    try:
        await asyncio.to_thread(cluster.start)
        databases = await prepare_databases(cluster, "motorical_bench", "encimap_bench")
        cfg = make_config(
            databases,
            database={"logins_session_attrs": "standby"},
            auth={"throttle_base_delay": 0.0},
        )
        pools = [
            await db.create_pool(
                cfg.database, name, role=db.ROLE_AUTH, target_session_attrs="standby"
            )
            for name in db.DATABASES
        ]
        listen = await db.create_pool(cfg.database, "encimap", role=db.ROLE_AUTH, listen=True)
        engine = AuthEngine(cfg, *pools, listen=listen)
        await engine.start()
        results = []
        try:
            for number in range(samples):
                box = await make_vaultbox(databases, f"revoke{number}@bench.test", kinds=("imap",))
                await engine.authenticate(box.username, box.password, service="imap")
                conn = await databases.connect()
                try:
                    await credentials.revoke_credentials(conn, box.username)
                    committed = time.monotonic()
                finally:
                    await conn.close()
                accepted = 0
                while True:
                    try:
                        await engine.authenticate(box.username, box.password, service="imap")
                    except AuthFailed:
                        break
                    accepted += 1
                results.append((time.monotonic() - committed, accepted))
        finally:
            await engine.close()
            for pool in (*pools, listen):
                await pool.close()
        return results
    finally:
        await asyncio.to_thread(cluster.stop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--fault", choices=["postmaster", "node", "switchover"], default="postmaster"
    )
    parser.add_argument(
        "--revocation",
        type=int,
        metavar="N",
        help="instead: the lag a standby adds to N revocations (logins_session_attrs)",
    )
    args = parser.parse_args()
    logs.configure("error", "console")
    # asyncpg's pool logs every failed attempt to refill itself during the outage.
    logging.getLogger("asyncpg").setLevel(logging.CRITICAL)
    if args.revocation:
        lags = asyncio.run(revocation_lag(args.revocation))
        seconds = [lag * 1000 for lag, _accepted in lags]
        accepted = [count for _lag, count in lags]
        print(
            f"revocation with logins read from a standby, {len(lags)} samples: refused "
            f"{statistics.median(seconds):.1f} ms after the commit (median), max "
            f"{max(seconds):.1f} ms; logins still accepted in between: median "
            f"{statistics.median(accepted):g}, max {max(accepted)}"
        )
        return 0
    results = asyncio.run(bench(args.runs, args.fault))
    recovery = [r.recovery for r in results]
    tempfails = [r.tempfails for r in results]
    print(
        f"{args.fault}: {len(results)} runs; primary's death to first 250 on the new primary: "
        f"median {statistics.median(recovery):.2f} s, max {max(recovery):.2f} s; "
        f"4xx in between: median {statistics.median(tempfails):g}, max {max(tempfails)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
