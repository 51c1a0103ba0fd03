"""nginx mail `auth_http`: one HTTP/1.0 request per login, answered in headers.

nginx sends `Auth-Method`, `Auth-User`, `Auth-Pass` (URL-escaped), `Auth-Protocol`,
`Client-IP` and `Auth-SSL`; the answer is `Auth-Status: OK` with `Auth-Server`/`Auth-Port`
of the upstream, or a failure text with `Auth-Wait` (and `Auth-Error-Code` for SMTP).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import unquote

from encimap import logs
from encimap.auth import AuthEngine, AuthFailed, AuthUnavailable
from encimap.config import AuthSocketConfig, ConfigError, parse_listener
from encimap.service.http import Request, Response

log = logs.get_logger(__name__)

FAILED = "Invalid login or password"
TEMPORARY = "Temporary server problem, try again later"
# Seconds nginx waits before letting the client try again (the engine already throttled).
FAILURE_WAIT = 1
METHODS = {"plain": "PLAIN", "login": "LOGIN"}
SERVICES = ("imap", "smtp")


def upstream(spec: str, key: str) -> tuple[str, int]:
    """nginx wants an IP address in Auth-Server; resolve a name once at start-up."""
    host, port = parse_listener(spec)
    if host == "unix":
        raise ConfigError(f"authsocket.{key}: nginx needs host:port, got {spec!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = socket.gethostbyname(str(host))
    return str(host), int(port)


class AuthHTTP:
    def __init__(self, engine: AuthEngine, config: AuthSocketConfig) -> None:
        self.engine = engine
        self.upstreams = {
            "imap": upstream(config.imap_upstream, "imap_upstream"),
            "smtp": upstream(config.smtp_upstream, "smtp_upstream"),
        }

    async def handle(self, request: Request) -> Response:
        if request.method not in ("GET", "POST"):
            return Response(405, b"GET only\n")
        _status, headers = await self.answer(request.headers)
        return Response(200, headers=headers)

    async def answer(self, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """(status, response headers) for nginx's request headers (names lower-cased)."""
        protocol = headers.get("auth-protocol", "").lower()
        method = METHODS.get(headers.get("auth-method", "").lower())
        username = unquote(headers.get("auth-user", ""))
        password = unquote(headers.get("auth-pass", ""))
        service = protocol if protocol in SERVICES else "smtp"
        if method is None or protocol not in SERVICES:
            username = password = ""  # refused by the engine like any malformed login
        try:
            await self.engine.authenticate(
                username,
                password,
                service=service,  # type: ignore[arg-type]
                client_ip=headers.get("client-ip"),
                secured=headers.get("auth-ssl", "").lower() == "on",
                method=method or headers.get("auth-method", "none"),
            )
        except AuthFailed:
            result = {"Auth-Status": FAILED, "Auth-Wait": str(FAILURE_WAIT)}
            if service == "smtp":
                result["Auth-Error-Code"] = "535 5.7.8"
            return "200 OK", result
        except AuthUnavailable:
            result = {"Auth-Status": TEMPORARY}
            if service == "smtp":
                result["Auth-Error-Code"] = "451 4.3.0"
            return "200 OK", result
        host, port = self.upstreams[service]
        return "200 OK", {"Auth-Status": "OK", "Auth-Server": host, "Auth-Port": str(port)}
