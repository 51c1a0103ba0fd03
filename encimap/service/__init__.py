"""Process life: start components on one event loop, signals, readiness, graceful drain.

Each front end exposes `async def start(runtime: Runtime) -> Component`. The runtime owns what
components share in one process (pools per database and role, TLS material, the auth engine)
and closes it in reverse order through one AsyncExitStack.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Protocol

import asyncpg

from encimap import db, logs
from encimap.config import Config, ConfigError
from encimap.config import load as load_config
from encimap.service import eventloop, health
from encimap.service.activation import inherited_sockets
from encimap.service.systemd import notify
from encimap.tls import TLSMaterial

log = logs.get_logger(__name__)

# name -> "module:function" of the front end's start(); imported only when served.
COMPONENTS: dict[str, str] = {
    "intake": "encimap.intake.service:start",
    "submission": "encimap.submission.service:start",
    "authsocket": "encimap.authsocket.service:start",
    "imap": "encimap.imap.service:start",
    "wkd": "encimap.wkd.service:start",
}


# Sections SIGHUP re-reads from the configuration file; everything else needs a restart.
RELOADABLE = ("log", "tls")


class Component(Protocol):
    name: str

    async def close(self) -> None:
        """Stop accepting new connections."""

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` for sessions in flight, then end the rest."""

    def reload(self) -> None:
        """Re-read reloadable material (SIGHUP)."""


class Runtime:
    """What the components of one process share."""

    def __init__(self, config: Config, stack: AsyncExitStack) -> None:
        self.config = config
        self.stack = stack
        # (database, role, kind): kind "" for the services' pools, "listen" for LISTEN
        # connections, "logins" for the auth engine's credential reads where they may go to
        # standbys.
        self._pools: dict[tuple[str, str | None, str], asyncpg.Pool] = {}
        self._tls: TLSMaterial | None = None
        self._shared: dict[str, Any] = {}
        self.reload_hooks: list[Callable[[], None]] = []
        # Listening sockets from systemd socket activation, for the component that serves them.
        self.inherited_sockets: list[socket.socket] = inherited_sockets()

    async def pool(
        self,
        database: db.Database,
        role: str | None,
        purpose: str,
        *,
        kind: str = "",
        **options: Any,
    ) -> asyncpg.Pool:
        """The process's pool for (database, role, kind), created on first use."""
        key = (database, role, kind)
        if key not in self._pools:
            pool = await db.create_pool(
                self.config.database, database, role=role, purpose=purpose, **options
            )
            self.stack.push_async_callback(pool.close)
            self._pools[key] = pool
        return self._pools[key]

    async def listen_pool(self, database: db.Database, role: str | None) -> asyncpg.Pool:
        """The process's pool for LISTEN connections on (database, role): one connection per
        listener, on the database's listen URL (direct where the pools go through PgBouncer),
        none held while nobody listens."""
        return await self.pool(
            database, role, "listen", kind="listen", min_size=0, max_size=4, listen=True
        )

    async def logins_pool(self, database: db.Database) -> asyncpg.Pool:
        """The auth engine's pool for credential lookups: the auth role's pool, or one of its
        own reading from standbys when `[database] logins_session_attrs` says so."""
        attrs = self.config.database.logins_session_attrs
        if not attrs:
            return await self.pool(database, db.ROLE_AUTH, "auth")
        return await self.pool(
            database, db.ROLE_AUTH, "logins", kind="logins", target_session_attrs=attrs
        )

    @property
    def pools(self) -> dict[tuple[str, str | None, str], asyncpg.Pool]:
        """Every pool, keyed (database, role, kind)."""
        return dict(self._pools)

    @property
    def tls(self) -> TLSMaterial:
        if self._tls is None:
            self._tls = TLSMaterial(self.config.tls)
            self.reload_hooks.append(self._tls.reload)
        return self._tls

    async def shared(self, key: str, factory: Callable[[], Awaitable[Any]]) -> Any:
        """One instance per process of something several components use (the auth engine)."""
        if key not in self._shared:
            self._shared[key] = await factory()
        return self._shared[key]

    def reload(self) -> None:
        """SIGHUP: re-read the reloadable keys ([log], [tls]) and run every reload hook (TLS
        files, the auth cache flush, components). A bad file keeps the running values."""
        changed = self._reload_config()
        for hook in self.reload_hooks:
            try:
                hook()
            except Exception as exc:  # a bad new file must not take the service down
                log.error("reload.failed", hook=getattr(hook, "__qualname__", ""), error=str(exc))
        log.info("reload.done", changed=changed)

    def _reload_config(self) -> list[str]:
        if not self.config.source:
            return []
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            log.error("reload.config_invalid", error=str(exc))
            return []
        changed = [key for key in RELOADABLE if getattr(new, key) != getattr(self.config, key)]
        self.config = dataclasses.replace(
            self.config, **{key: getattr(new, key) for key in RELOADABLE}
        )
        if "log" in changed:
            logs.configure(new.log.level, new.log.format)
        if self._tls is not None:
            self._tls.config = new.tls
        return changed


def selected(which: str) -> list[str]:
    return list(COMPONENTS) if which == "all" else [which]


async def _start(runtime: Runtime, name: str) -> Component:
    module_name, function = COMPONENTS[name].split(":")
    start = getattr(importlib.import_module(module_name), function)
    return await start(runtime)


async def run(
    config: Config,
    which: str = "all",
    *,
    configure_logs: bool = True,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or `stop`), then drain. Returns the exit status.

    READY=1 goes to systemd only when the pools are connected and every listener is bound;
    WATCHDOG=1 is sent from the event loop itself, so a blocked loop stops the pings.
    """
    if configure_logs:
        logs.configure(config.log.level, config.log.format)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        runtime = Runtime(config, stack)
        endpoint = None
        if metrics_listen := config.metrics.for_service(which):
            endpoint = await health.start(runtime, metrics_listen)
        components = [await _start(runtime, name) for name in selected(which)]
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, runtime.reload)
        stack.callback(_remove_signal_handlers, loop)
        for component in components:
            runtime.reload_hooks.append(component.reload)
        stack.enter_context(_watchdog())
        if endpoint is not None:
            endpoint.started = True
        notify("READY=1")
        log.info(
            "service.ready",
            components=[c.name for c in components],
            event_loop=eventloop.implementation(loop),
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        notify("STOPPING=1")
        log.info("service.stopping", drain_timeout=config.service.drain_timeout)
        for component in components:
            await component.close()
        await asyncio.gather(
            *(component.drain(config.service.drain_timeout) for component in components)
        )
    log.info("service.stopped")
    return 0


@contextlib.contextmanager
def _watchdog():
    """Ping systemd's watchdog at half its interval while the context is open."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        yield
        return
    interval = int(usec) / 2_000_000

    async def ping() -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    task = asyncio.get_running_loop().create_task(ping())
    try:
        yield
    finally:
        task.cancel()


def _remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(signum)
