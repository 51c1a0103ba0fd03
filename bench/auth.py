"""Auth benchmark through the auth socket (Dovecot protocol over a unix socket).

One run measures, on a private PostgreSQL cluster with a cost-12 bcrypt credential:
- uncached logins/s with 1 and with 2 bcrypt workers (cache off; target ratio >= 1.7),
- cached logins/s (target >= 100 x the 2-worker uncached rate),
- p99 latency of cached logins while 50 uncached ones are in flight (target < 20 ms).

Run: `python -m bench.auth` (about a minute on 2 cores).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from encimap import config as config_module
from encimap import logs, service
from encimap.auth.passwords import hash_password
from encimap.pgcluster import LocalCluster, prepare_databases
from encimap.store import credentials, vaultboxes

COST = 12
PASSWORD = "bench-password-1"


class Client:
    """One auth-socket connection; many requests in flight, answers matched by id."""

    _ids = itertools.count(1)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.waiting: dict[str, asyncio.Future[str]] = {}
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, path: Path) -> Client:
        reader, writer = await asyncio.open_unix_connection(str(path))
        client = cls(reader, writer)
        writer.write(b"VERSION\t1\t2\nCPID\t1\n")
        while (await reader.readline()).strip() != b"DONE":
            pass
        client.task = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        while line := await self.reader.readline():
            verdict, request_id, *_ = line.decode().rstrip("\n").split("\t")
            self.waiting.pop(request_id).set_result(verdict)

    async def login(self, username: str, password: str) -> tuple[str, float]:
        request_id = str(next(self._ids))
        resp = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        future = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        started = time.perf_counter()
        self.writer.write(
            f"AUTH\t{request_id}\tPLAIN\tservice=smtp\trip=127.0.0.1\tsecured\tresp={resp}\n".encode()
        )
        verdict = await future
        return verdict, time.perf_counter() - started

    async def close(self) -> None:
        self.writer.close()
        if self.task:
            self.task.cancel()


@asynccontextmanager
async def serving(cfg: config_module.Config, socket: Path) -> AsyncIterator[Client]:
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        service.run(cfg, "authsocket", configure_logs=False, ready=ready, stop=stop)
    )
    await asyncio.wait_for(ready.wait(), 30)
    client = await Client.connect(socket)
    try:
        yield client
    finally:
        await client.close()
        stop.set()
        await task


async def rate(client: Client, username: str, total: int, concurrency: int, password=None) -> float:
    """Logins per second for `total` logins, `concurrency` in flight."""
    counter = itertools.count()

    async def worker() -> None:
        while (n := next(counter)) < total:
            verdict, _ = await client.login(username, password(n) if password else PASSWORD)
            assert verdict == ("FAIL" if password else "OK"), verdict

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


async def prepare(cluster: LocalCluster) -> tuple[config_module.Config, str]:
    motorical_url, encimap_url = await prepare_databases(
        cluster, "bench_motorical", "bench_encimap"
    )
    conn = await asyncpg.connect(encimap_url)
    box = await vaultboxes.create_vaultbox(
        conn, user_id=uuid.uuid4(), alias="bench", domain="bench.test", name=None
    )
    username = credentials.new_username("bench.test")
    await credentials.create_credential(
        conn,
        kind="smtp",
        vaultbox_id=box.id,
        username=username,
        password_hash=hash_password(PASSWORD, COST),
    )
    await conn.close()
    cfg = config_module.Config(
        database=config_module.DatabaseConfig(motorical_url=motorical_url, encimap_url=encimap_url),
    )
    return cfg, username


def with_auth(cfg: config_module.Config, socket: Path, **auth: object) -> config_module.Config:
    return dataclasses.replace(
        cfg,
        auth=dataclasses.replace(cfg.auth, bcrypt_cost=COST, **auth),
        authsocket=dataclasses.replace(cfg.authsocket, listen=[f"unix:{socket}"]),
    )


async def main() -> None:
    logs.configure("error", "console")
    base = Path(tempfile.mkdtemp(prefix="encimap-bench-"))
    cluster = LocalCluster(base / "pg")
    cluster.start()
    socket = base / "auth"
    try:
        cfg, user = await prepare(cluster)
        uncached: dict[int, float] = {}
        for workers, total in ((1, 12), (2, 24)):
            no_cache = with_auth(cfg, socket, bcrypt_workers=workers, cache_size=0)
            async with serving(no_cache, socket) as client:
                await client.login(user, PASSWORD)  # warm the pools
                uncached[workers] = await rate(client, user, total, concurrency=8)
        cached_cfg = with_auth(cfg, socket, bcrypt_workers=2, bcrypt_queue=64)
        async with serving(cached_cfg, socket) as client:
            await client.login(user, PASSWORD)
            cached = await rate(client, user, 3000, concurrency=16)

            # p99 of cached logins while 50 uncached ones (distinct wrong passwords) are queued.
            slow = [asyncio.create_task(client.login(user, f"wrong-{n}")) for n in range(50)]
            latencies = []
            while not all(task.done() for task in slow):
                verdict, seconds = await client.login(user, PASSWORD)
                assert verdict == "OK"
                latencies.append(seconds)
                await asyncio.sleep(0.005)
            await asyncio.gather(*slow)
        p99 = statistics.quantiles(latencies, n=100)[98] * 1000
        ratio = uncached[2] / uncached[1]
        print(f"bcrypt cost {COST}, auth socket, {len(latencies)} cached samples under load")
        print(f"uncached logins/s, 1 worker : {uncached[1]:8.2f}")
        print(
            f"uncached logins/s, 2 workers: {uncached[2]:8.2f}  ratio {ratio:.2f} (target >= 1.7)"
        )
        print(
            f"cached logins/s             : {cached:8.1f}  = {cached / uncached[2]:.0f} x uncached"
            " (target >= 100 x)"
        )
        print(f"cached p99 with 50 uncached in flight: {p99:.1f} ms (target < 20 ms)")
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
