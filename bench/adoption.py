"""Adopting a platform database with many legacy messages, while deliveries go on.

    python -m bench.adoption [--rows 1000000] [--vaultboxes 1000] [--body 600]

A private cluster gets the platform's v2.1 schema (../shared/seed/) and ROWS legacy messages
spread over VAULTBOXES vaultboxes (TEXT bodies of BODY bytes, no mailbox, UID or flags). Then,
as `encimap db migrate` does: the schema migrations, the default mailboxes, placing the mail in
batches and describing it. Meanwhile a second connection stores one message a second way per
50 ms into one of the vaultboxes, the platform's way (an INSERT naming only platform columns,
placed by the trigger), and records how long each took: the longest wait is what a delivery
saw of the adoption's locks. Prints each phase's time and rate, and that longest wait.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import asyncpg

from encimap import migrations
from encimap.pgcluster import LocalCluster
from encimap.store import adoption

SEED = Path(__file__).resolve().parent.parent.parent / "shared" / "seed"


async def fill(conn: asyncpg.Connection, rows: int, vaultboxes: int, body: int) -> None:
    await conn.execute((SEED / "motorical_encrypted_imap-v2.1.sql").read_text())
    await conn.execute(
        """INSERT INTO vaultboxes (user_id, domain, name, alias)
           SELECT gen_random_uuid(), 'bench.test', 'box ' || n, 'box' || n
             FROM generate_series(1, $1) AS n""",
        vaultboxes,
    )
    await conn.execute(
        """INSERT INTO encrypted_emails (vaultbox_id, message_id, sender, recipient,
                                         body_encrypted, processed_at)
           SELECT v.ids[1 + n % $2], '<' || n || '@bench.test>', 'a@b.test', 'r@bench.test',
                  'Subject: legacy ' || n || E'\\r\\nFrom: a@b.test\\r\\n\\r\\n' || repeat('x', $3),
                  timestamp '2024-01-01' + make_interval(secs => n)
             FROM generate_series(1, $1) AS n,
                  (SELECT array_agg(id) AS ids FROM vaultboxes) AS v""",
        rows,
        vaultboxes,
        body,
    )


async def deliveries(url: str, stop: asyncio.Event, waits: list[float]) -> None:
    conn = await asyncpg.connect(url)
    try:
        box = await conn.fetchval("SELECT id FROM vaultboxes ORDER BY alias LIMIT 1")
        while not stop.is_set():
            started = time.perf_counter()
            await conn.execute(
                """INSERT INTO encrypted_emails (vaultbox_id, message_id, sender, recipient,
                                                 body_encrypted)
                   VALUES ($1, 'live', 'a@b.test', 'r@bench.test', 'Subject: live')""",
                box,
            )
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def main(rows: int, vaultboxes: int, body: int) -> None:
    with tempfile.TemporaryDirectory(prefix="encimap-bench-adoption-") as base:
        cluster = LocalCluster(Path(base) / "data")
        cluster.start()
        try:
            cluster.create_database("platform")
            url = cluster.url("platform")
            conn = await asyncpg.connect(url)
            try:
                started = time.perf_counter()
                await fill(conn, rows, vaultboxes, body)
                print(f"legacy rows written: {rows} in {time.perf_counter() - started:.1f} s")
                await run_adoption(conn, url, rows)
            finally:
                await conn.close()
        finally:
            cluster.stop("immediate")


async def run_adoption(conn: asyncpg.Connection, url: str, rows: int) -> None:
    started = time.perf_counter()
    await migrations.migrate(conn, "encimap")
    print(f"schema migrations: {time.perf_counter() - started:.2f} s")
    stop, waits = asyncio.Event(), []
    live = asyncio.create_task(deliveries(url, stop, waits))
    marks: dict[str, float] = {}
    started = time.perf_counter()

    def progress(line: str) -> None:
        marks[line.split()[0]] = time.perf_counter() - started

    await adoption.adopt(conn, progress)
    stop.set()
    await live
    total = time.perf_counter() - started
    placed = marks.get("placed", 0.0)
    print(f"placed {rows} messages in {placed:.1f} s ({rows / max(placed, 1e-9):,.0f}/s)")
    described = marks.get("described", total) - placed
    print(f"described {rows} messages in {described:.1f} s ({rows / max(described, 1e-9):,.0f}/s)")
    print(f"data moves in all: {total:.1f} s")
    print(
        f"concurrent platform-style deliveries: {len(waits)}, "
        f"longest {max(waits) * 1000:.0f} ms, median {sorted(waits)[len(waits) // 2] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--vaultboxes", type=int, default=1_000)
    parser.add_argument("--body", type=int, default=600)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.vaultboxes, args.body))
