"""`encimap serve intake`: the LMTP (or SMTP) listeners Postfix delivers inbound mail to."""

from __future__ import annotations

import asyncio
import signal
import socket

from encimap import db, logs
from encimap.config import Config, listeners
from encimap.delivery.certificates import CertificateCompleter
from encimap.intake.handler import IntakeHandler
from encimap.intake.server import Connections, IntakeLMTP, IntakeSMTP
from encimap.service import Runtime, workers
from encimap.service.bytebudget import ByteBudget
from encimap.service.connlimits import ConnectionLimiter, Limits
from encimap.service.listeners import bind

log = logs.get_logger(__name__)

PROXY_PROTOCOL_TIMEOUT = 5.0


class Intake:
    name = "intake"

    def __init__(
        self,
        servers: list[asyncio.Server],
        connections: Connections,
        handler: IntakeHandler,
        extra_workers: workers.Workers | None,
        completer: CertificateCompleter,
    ) -> None:
        self._servers = servers
        self._completer = completer
        self._connections = connections
        self._handler = handler
        self.workers = extra_workers

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        if self._handler.recipients is not None:
            await self._handler.recipients.watch.close()  # before the pool closes
        await self._completer.close()
        self._connections.start_draining()
        if self.workers is not None:
            self.workers.stop()

    async def drain(self, timeout: float) -> None:
        left = await self._connections.wait_closed(timeout)
        unfinished = await self._handler.deliveries.drain(timeout)
        if self.workers is not None:
            await self.workers.wait(timeout)
        log.info("intake.drained", connections_closed=left, deliveries_cancelled=unfinished)

    def reload(self) -> None:
        if self.workers is not None:
            self.workers.signal(signal.SIGHUP)


def protocol_factory(
    handler: IntakeHandler, config: Config, connections: Connections, hostname: str
):
    settings = config.intake
    limiter = ConnectionLimiter("intake", Limits.of(settings))
    data_budget = ByteBudget(settings.max_data_bytes_in_flight, "intake")
    protocol = IntakeLMTP if settings.protocol == "lmtp" else IntakeSMTP
    proxy_timeout = PROXY_PROTOCOL_TIMEOUT if settings.proxy_protocol else None

    def factory() -> IntakeLMTP | IntakeSMTP:
        return protocol(
            handler,
            connections=connections,
            limiter=limiter,
            data_timeout=settings.data_timeout,
            data_budget=data_budget,
            data_size_limit=settings.max_message_size or None,
            enable_SMTPUTF8=True,
            hostname=hostname,
            ident="encimap",
            timeout=settings.timeout,
            proxy_protocol_timeout=proxy_timeout,
            loop=asyncio.get_running_loop(),
        )

    return factory


async def start(runtime: Runtime) -> Intake:
    config = runtime.config
    settings = config.intake
    # The intake never changes session state on its connections (see db.create_pool).
    pool = await runtime.pool("encimap", db.ROLE_INTAKE, "intake")
    hostname = settings.hostname or socket.getfqdn()
    listen_pool = (
        await runtime.listen_pool("encimap", db.ROLE_INTAKE)
        if config.intake.recipient_cache_seconds > 0
        else None
    )
    handler = IntakeHandler(pool, config, hostname=hostname, listen_pool=listen_pool)
    if handler.recipients is not None:
        handler.recipients.watch.start()
    completer = CertificateCompleter(pool)
    completer.start()
    connections = Connections()
    factory = protocol_factory(handler, config, connections, hostname)
    shared = settings.workers > 1
    servers = [
        await bind(spec, factory, reuse_port=shared, sock=workers.inherited_socket(spec))
        for spec in listeners(settings.listen)
    ]
    extra: workers.Workers | None = None
    if shared and workers.worker_number() is None:
        extra = workers.Workers(
            "intake", config, workers.unix_sockets(settings.listen, servers), settings.workers - 1
        )
        await extra.start()
    log.info(
        "intake.listening",
        listen=listeners(settings.listen),
        protocol=settings.protocol,
        worker=workers.worker_number() or 0,
    )
    return Intake(servers, connections, handler, extra, completer)
