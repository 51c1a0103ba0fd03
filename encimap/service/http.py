"""A minimal HTTP/1.0 server for the host-local endpoints: metrics and health here, nginx's
auth_http in the auth socket service. One request per connection; bounded head size."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from encimap.config import parse_listener
from encimap.logs import get_logger
from encimap.service.connlimits import ConnectionLimiter, peer_ip

log = get_logger(__name__)

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT = 10.0
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # names lower-cased
    client_ip: str


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[Request], Awaitable[Response]]
# Decides from the peer's address alone whether it may ask; a refused one is disconnected
# before its request is read (no answer: it is not a client of ours).
Admit = Callable[[str], bool]
FORBIDDEN = Response(403, b"forbidden\n")


def _parse_head(head: bytes, client_ip: str) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError("not an HTTP/1.x request line")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    url = urlsplit(target)
    return Request(method, url.path, url.query, headers, client_ip)


def _encode(response: Response) -> bytes:
    head = [
        f"HTTP/1.0 {response.status} {_REASONS.get(response.status, 'Status')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
    ]
    head += [f"{name}: {value}" for name, value in response.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body


async def _serve_one(
    handler: Handler,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    admit: Admit | None = None,
    limiter: ConnectionLimiter | None = None,
) -> None:
    peer = writer.get_extra_info("peername")
    client_ip = peer[0] if isinstance(peer, tuple) else "local"
    ticket = limiter.admit(peer_ip(peer)) if limiter is not None else None
    try:
        if limiter is not None and ticket is None:
            return
        if admit is not None and not admit(client_ip):
            return
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            request = _parse_head(head[:-4], client_ip)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            writer.write(_encode(Response(400, b"bad request\n")))
            return
        try:
            response = await handler(request)
        except Exception:
            log.exception("http.handler_failed", path=request.path)
            response = Response(500, b"internal error\n")
        writer.write(_encode(response))
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        if ticket is not None:
            ticket.release()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(
    spec: str,
    handler: Handler,
    admit: Admit | None = None,
    limiter: ConnectionLimiter | None = None,
) -> asyncio.Server:
    """Serve `handler` on `spec`; a peer `admit` refuses, or one over the `limiter`'s
    connection limits, is disconnected unanswered."""
    host, port = parse_listener(spec)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_one(handler, reader, writer, admit, limiter)

    if host == "unix":
        return await asyncio.start_unix_server(on_connect, str(port), limit=MAX_HEAD_BYTES)
    return await asyncio.start_server(
        on_connect, host, int(port), limit=MAX_HEAD_BYTES, reuse_address=True
    )
