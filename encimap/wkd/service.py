"""`encimap serve wkd`: the Web Key Directory on `[wkd] listen` (off when empty).

Plain HTTP: senders' clients fetch keys over HTTPS, so a TLS-terminating proxy (nginx, the
web server of the domain) forwards `/.well-known/openpgpkey/` of DOMAIN and of
openpgpkey.DOMAIN here. Reads through the intake's database role (vaultboxes and public keys).
"""

from __future__ import annotations

import asyncio

from encimap import db, logs
from encimap.config import listeners
from encimap.service import Runtime
from encimap.service.connlimits import ConnectionLimiter, Limits
from encimap.service.http import Request, Response, serve
from encimap.store import openpgp_keys
from encimap.wkd import directory

log = logs.get_logger(__name__)


class WebKeyDirectory:
    name = "wkd"

    def __init__(self, servers: list[asyncio.Server]) -> None:
        self._servers = servers

    async def close(self) -> None:
        for server in self._servers:
            server.close()

    async def drain(self, timeout: float) -> None:
        for server in self._servers:
            try:
                async with asyncio.timeout(timeout):
                    await server.wait_closed()
            except TimeoutError:
                pass

    def reload(self) -> None:
        pass


async def start(runtime: Runtime) -> WebKeyDirectory:
    config = runtime.config
    specs = listeners(config.wkd.listen) if config.wkd.listen else []
    if not specs:
        log.info("wkd.off", reason="wkd.listen is empty")
        return WebKeyDirectory([])
    pool = await runtime.pool("encimap", db.ROLE_INTAKE, "wkd")

    async def lookup(domain: str) -> list[tuple[str, str]]:
        async with db.acquire(pool, config.database.connect_timeout) as conn:
            return await openpgp_keys.published_keys(conn, domain)

    async def handle(request: Request) -> Response:
        try:
            response = await directory.answer(request, lookup)
        except db.DATABASE_ERRORS:
            response = Response(503, b"temporarily unavailable\n")
        log.info("wkd.request", path=request.path, status=response.status, client=request.client_ip)
        return response

    limiter = ConnectionLimiter("wkd", Limits.of(config.wkd))
    servers = [await serve(spec, handle, limiter=limiter) for spec in specs]
    log.info("wkd.listening", listen=specs)
    return WebKeyDirectory(servers)
