"""`encimap serve submission`: the listeners (STARTTLS and implicit TLS) on the main loop."""

from __future__ import annotations

import asyncio
import logging
import socket

from encimap import config as config_module
from encimap import db, logs
from encimap.auth import engine_for
from encimap.delivery.deliverer import Deliverer
from encimap.delivery.recipients import CertificateCache
from encimap.service import Runtime
from encimap.service.bytebudget import ByteBudget
from encimap.service.connlimits import ConnectionLimiter, Limits
from encimap.service.listeners import Sessions, bind
from encimap.submission.handler import Context, LocalDelivery, Settings, SubmissionHandler
from encimap.submission.relay import RelaySettings
from encimap.submission.server import SubmissionServer

log = logs.get_logger(__name__)


def build_settings(config: config_module.SubmissionConfig, hostname: str) -> Settings:
    return Settings(
        hostname=hostname,
        max_recipients=config.max_recipients,
        check_from_header=config.check_from_header,
        relay=RelaySettings.from_config(config, hostname),
    )


class SubmissionService:
    name = "submission"

    def __init__(self, runtime: Runtime, context: Context) -> None:
        self.runtime = runtime
        self.context = context
        self.config = runtime.config.submission
        self.sessions = Sessions()
        self.servers: list[asyncio.Server] = []
        self.limiter = ConnectionLimiter("submission", Limits.of(self.config))
        self.data_budget = ByteBudget(self.config.max_data_bytes_in_flight, "submission")

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket (tests bind port 0)."""
        return [sock.getsockname()[:2] for s in self.servers for sock in s.sockets]

    async def listen(self, spec: str, *, implicit_tls: bool) -> None:
        tls = self.runtime.tls
        server = await bind(
            spec,
            lambda: self._protocol(implicit_tls),
            tls=tls.listener_context() if implicit_tls else None,
        )
        self.servers.append(server)
        log.info("submission.listening", listen=spec, implicit_tls=implicit_tls)

    def _protocol(self, implicit_tls: bool) -> SubmissionServer:
        # Read per connection: a reload (TLS files, relay password) applies to new sessions.
        return SubmissionServer(
            SubmissionHandler(self.context),
            implicit_tls=implicit_tls,
            tls_context=self.runtime.tls.context,
            hostname=self.context.settings.hostname,
            max_message_size=self.config.max_message_size,
            timeout=self.config.timeout,
            data_timeout=self.config.data_timeout,
            max_errors=self.config.max_errors,
            limiter=self.limiter,
            data_budget=self.data_budget,
            on_session=self.sessions.add,
        )

    async def close(self) -> None:
        for server in self.servers:
            server.close()

    async def drain(self, timeout: float) -> None:
        left = await self.sessions.drain(timeout)
        # Sessions that ended (or were cancelled) leave a short task releasing their quota.
        await self.sessions.drain(2.0)
        if self.context.local is not None:
            await self.context.local.background.drain(2.0)
        if left:
            log.warning("submission.drain_timeout", cancelled=left)

    def reload(self) -> None:
        settings = build_settings(self.config, self.context.settings.hostname)
        self.context.settings = settings


async def _local_delivery(runtime: Runtime) -> LocalDelivery:
    pool = await runtime.pool("encimap", db.ROLE_INTAKE, "submission-local")
    background = Sessions()
    return LocalDelivery(
        pool,
        runtime.config,
        Deliverer(pool, runtime.config, background),
        CertificateCache(),
        background,
    )


async def start(runtime: Runtime) -> SubmissionService:
    # aiosmtpd logs every command line (AUTH responses included) at INFO on "mail.log".
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    config = runtime.config.submission
    hostname = config.hostname or socket.getfqdn()
    context = Context(
        engine=await engine_for(runtime),
        pool=await runtime.pool("encimap", db.ROLE_AUTH, "submission"),
        settings=build_settings(config, hostname),
        local=await _local_delivery(runtime) if config.local_delivery else None,
    )
    service = SubmissionService(runtime, context)
    try:
        for spec in config_module.listeners(config.listen):
            await service.listen(spec, implicit_tls=False)
        for spec in config_module.listeners(config.tls_listen):
            await service.listen(spec, implicit_tls=True)
    except BaseException:
        await service.close()
        raise
    return service
