"""Binding listeners (`host:port` or `unix:/path`) and tracking sessions for a graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import stat
from collections.abc import Callable
from typing import Any

from encimap.config import parse_listener


async def bind(
    spec: str,
    factory: Callable[[], asyncio.BaseProtocol],
    *,
    tls: ssl.SSLContext | None = None,
    reuse_port: bool = False,
    socket_mode: int = 0o660,
    sock: Any = None,
) -> asyncio.Server:
    """Listen on `spec` with a protocol factory (or on an inherited socket `sock`)."""
    loop = asyncio.get_running_loop()
    if sock is not None:
        if sock.family == socket.AF_UNIX:
            return await loop.create_unix_server(factory, sock=sock, ssl=tls)
        return await loop.create_server(factory, sock=sock, ssl=tls)
    host, port = parse_listener(spec)
    if host == "unix":
        path = str(port)
        _remove_stale_socket(path)
        server = await loop.create_unix_server(factory, path, ssl=tls)
        os.chmod(path, socket_mode)
        return server
    return await loop.create_server(
        factory, host, int(port), ssl=tls, reuse_address=True, reuse_port=reuse_port or None
    )


def _remove_stale_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


class Sessions:
    """The sessions (tasks) of one component, so shutdown can wait for them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> int:
        """Wait for sessions in flight; cancel what is left after `timeout`. Returns that count."""
        if not self._tasks:
            return 0
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1)
        return len(pending)
