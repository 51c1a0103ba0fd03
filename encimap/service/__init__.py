"""Process life: start components on one event loop, signals, readiness, graceful drain.

Each front end exposes `async def start(runtime: Runtime) -> Component`. The runtime owns what
components share in one process (pools per database and role, TLS material, the auth engine)
and closes it in reverse order through one AsyncExitStack.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Protocol

import asyncpg

from encimap import db, logs
from encimap.config import Config
from encimap.service.systemd import notify
from encimap.tls import TLSMaterial

log = logs.get_logger(__name__)

# name -> "module:function" of the front end's start(); imported only when served.
COMPONENTS: dict[str, str] = {
    "intake": "encimap.intake.service:start",
    "imap": "encimap.imap.service:start",
}


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
        self._pools: dict[tuple[str, str | None], asyncpg.Pool] = {}
        self._tls: TLSMaterial | None = None
        self._shared: dict[str, Any] = {}
        self.reload_hooks: list[Callable[[], None]] = []

    async def pool(
        self, database: db.Database, role: str | None, purpose: str, *, light_reset: bool = False
    ) -> asyncpg.Pool:
        key = (database, role)
        if key not in self._pools:
            pool = await db.create_pool(
                self.config.database, database, role=role, purpose=purpose, light_reset=light_reset
            )
            self.stack.push_async_callback(pool.close)
            self._pools[key] = pool
        return self._pools[key]

    @property
    def pools(self) -> dict[tuple[str, str | None], asyncpg.Pool]:
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
        for hook in self.reload_hooks:
            try:
                hook()
            except Exception as exc:  # a bad new file must not take the service down
                log.error("reload.failed", error=str(exc))
        log.info("reload.done")


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
    """Serve until SIGTERM/SIGINT (or `stop`), then drain. Returns the exit status."""
    if configure_logs:
        logs.configure(config.log.level, config.log.format)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        runtime = Runtime(config, stack)
        components = [await _start(runtime, name) for name in selected(which)]
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, runtime.reload)
        stack.callback(_remove_signal_handlers, loop)
        for component in components:
            runtime.reload_hooks.append(component.reload)
        notify("READY=1")
        log.info("service.ready", components=[c.name for c in components])
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


def _remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(signum)
