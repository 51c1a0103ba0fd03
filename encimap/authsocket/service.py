"""`encimap serve authsocket`: the Dovecot-protocol socket(s) and the optional nginx endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import os
import pwd

from encimap import logs
from encimap.auth import engine_for
from encimap.authsocket.codec import MAX_LINE
from encimap.authsocket.connection import AuthConnection
from encimap.authsocket.http import AuthHTTP, in_networks
from encimap.config import AuthSocketConfig, ConfigError, listeners, parse_listener
from encimap.service.connlimits import ConnectionLimiter, Limits, peer_ip
from encimap.service.http import Request, Response
from encimap.service.http import serve as serve_http
from encimap.service.listeners import Sessions, bind

log = logs.get_logger(__name__)


class AuthSocketService:
    name = "authsocket"

    def __init__(self, servers: list[asyncio.Server], requests: Sessions) -> None:
        self.servers = servers
        self.requests = requests
        self.connections: set[AuthConnection] = set()

    async def close(self) -> None:
        for server in self.servers:
            server.close()

    async def drain(self, timeout: float) -> None:
        """Answer the requests in flight, then close the (long-lived) client connections."""
        await self.requests.drain(timeout)
        for connection in list(self.connections):
            connection.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)

    def reload(self) -> None:
        """Nothing to re-read: the engine's cache flush is its own reload hook."""


async def start(runtime) -> AuthSocketService:
    config: AuthSocketConfig = runtime.config.authsocket
    engine = await engine_for(runtime)
    requests = Sessions()
    service = AuthSocketService([], requests)
    limiter = ConnectionLimiter("authsocket", Limits.of(config))
    allowed = [ipaddress.ip_network(net, strict=False) for net in config.allowed_peers]

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client_ip = peer_ip(writer.get_extra_info("peername"))
        # A TCP peer is believed about its clients' addresses (rip=, which the throttling
        # counts by and trusted_networks exempts): only allowed peers may speak.
        if client_ip is not None and not in_networks(client_ip, allowed):
            log.warning("authsocket.refused", rip=client_ip, reason="peer")
            writer.close()
            return
        ticket = limiter.admit(client_ip)
        if ticket is None:
            writer.close()
            return
        connection = AuthConnection(engine, reader, writer, requests)
        service.connections.add(connection)
        try:
            await connection.run()
        finally:
            service.connections.discard(connection)
            ticket.release()

    def protocol() -> asyncio.StreamReaderProtocol:
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=MAX_LINE + 1), on_connect)

    if runtime.inherited_sockets:  # systemd socket activation: serve what the .socket made
        for sock in runtime.inherited_sockets:
            service.servers.append(await bind("", protocol, sock=sock))
            log.info("authsocket.listening", listen=str(sock.getsockname()), activated=True)
    else:
        mode = _socket_mode(config.socket_mode)
        for spec in listeners(config.listen):
            service.servers.append(await bind(spec, protocol, socket_mode=mode))
            _chown_socket(spec, config)
            log.info("authsocket.listening", listen=spec)
    if config.http_listen:
        http = AuthHTTP(engine, config)

        async def on_http(request: Request) -> Response:
            task = asyncio.current_task()
            if task is not None:
                requests.add(task)
            return await http.handle(request)

        service.servers.append(await serve_http(config.http_listen, on_http, http.peer_allowed))
        log.info("authsocket.http_listening", listen=config.http_listen)
    return service


def _socket_mode(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise ConfigError(f"authsocket.socket_mode: not an octal mode: {text!r}") from None


def _chown_socket(spec: str, config: AuthSocketConfig) -> None:
    """Give a unix socket the configured owner/group (e.g. group `postfix`)."""
    host, path = parse_listener(spec)
    if host != "unix" or not (config.socket_owner or config.socket_group):
        return
    try:
        uid = pwd.getpwnam(config.socket_owner).pw_uid if config.socket_owner else -1
        gid = grp.getgrnam(config.socket_group).gr_gid if config.socket_group else -1
    except KeyError as exc:
        raise ConfigError(
            f"authsocket.socket_owner/socket_group: no such user or group {exc}"
        ) from None
    os.chown(str(path), uid, gid)
