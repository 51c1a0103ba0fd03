"""/metrics, /healthz and /readyz for one process.

/healthz answers while the process runs; /readyz only once every component is started and
both databases answer (503 otherwise). It has one line per pool: the server the pool is
connected to and whether that server is the primary. A database the process has
no pool for is checked through the endpoint's own one-connection pool.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from encimap import db
from encimap.metrics import DB_POOL_CONNECTIONS, REGISTRY
from encimap.service.http import Request, Response, serve

READY_TIMEOUT = 2.0


class HealthEndpoint:
    def __init__(self, runtime) -> None:  # runtime: encimap.service.Runtime
        self.runtime = runtime
        self.started = False
        self._unavailable: dict[str, str] = {}

    async def handle(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"GET only\n")
        if request.path == "/metrics":
            self._observe_pools()
            return Response(200, generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
        if request.path == "/healthz":
            return Response(200, b"ok\n")
        if request.path == "/readyz":
            return await self._ready()
        return Response(404, b"not found\n")

    def _observe_pools(self) -> None:
        for (database, role, kind), pool in self.runtime.pools.items():
            size, idle = pool.get_size(), pool.get_idle_size()
            label = f"{role or ''}{'/' + kind if kind else ''}"
            DB_POOL_CONNECTIONS.labels(database, label, "open").set(size)
            DB_POOL_CONNECTIONS.labels(database, label, "idle").set(idle)

    async def _checks(self) -> list[tuple[str, db.Health]]:
        """One check per pool of the process (label `database/role[/kind]`), and one through a
        one-connection pool for a database the process has no pool for."""
        pools = [
            (f"{database}/{role or 'login'}{'/' + kind if kind else ''}", database, pool)
            for (database, role, kind), pool in self.runtime.pools.items()
        ]
        for database in db.DATABASES:
            if any(name == database for _label, name, _pool in pools):
                continue
            try:
                pool = await self.runtime.pool(
                    database, db.ROLE_AUTH, "health", min_size=0, max_size=1
                )
            except db.DatabaseUnavailable as exc:
                pools.append((database, database, None))
                self._unavailable[database] = str(exc)
                continue
            pools.append((f"{database}/{db.ROLE_AUTH}", database, pool))

        async def check(label: str, database: db.Database, pool) -> tuple[str, db.Health]:
            if pool is None:
                return label, db.Health(database, False, 0.0, self._unavailable[database])
            return label, await db.check_health(pool, database, READY_TIMEOUT)

        return list(await asyncio.gather(*(check(*entry) for entry in pools)))

    async def _ready(self) -> Response:
        if not self.started:
            return Response(503, b"starting\n")
        checks = await self._checks()
        lines = [f"{label}: {health.describe()}" for label, health in checks]
        status = 200 if all(health.ok for _label, health in checks) else 503
        return Response(status, ("\n".join(lines) + "\n").encode())


async def start(runtime, spec: str) -> HealthEndpoint:
    endpoint = HealthEndpoint(runtime)
    server = await serve(spec, endpoint.handle)
    runtime.stack.push_async_callback(_close, server)
    return endpoint


async def _close(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()
