"""nginx mail `auth_http`: one HTTP/1.0 request per login, answered in headers.

nginx sends `Auth-Method`, `Auth-User`, `Auth-Pass` (URL-escaped), `Auth-Protocol`,
`Client-IP` and `Auth-SSL`; the answer is `Auth-Status: OK` with `Auth-Server`/`Auth-Port`
of the upstream, or a failure text with `Auth-Wait` (and `Auth-Error-Code` for SMTP).

The endpoint believes what its caller says (above all `Client-IP`, which the throttling counts
by), so only nginx may call it: a peer outside `http_allowed_peers` is disconnected unanswered
(unix-socket peers are trusted by the socket's file mode), a request without the
`http_secret_file` secret in `X-Encimap-Secret` gets `403`, and a request without a valid
`Client-IP` gets `400`. Client addresses in `[auth] trusted_networks` are exempt from
throttling here only with `http_trust_client_networks`: by default every address nginx names
is throttled.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from pathlib import Path
from urllib.parse import unquote

from encimap import logs
from encimap.auth import AuthEngine, AuthFailed, AuthUnavailable
from encimap.config import AuthSocketConfig, ConfigError, parse_listener
from encimap.service.http import FORBIDDEN, Request, Response

log = logs.get_logger(__name__)

FAILED = "Invalid login or password"
TEMPORARY = "Temporary server problem, try again later"
# Seconds nginx waits before letting the client try again (the engine already throttled).
FAILURE_WAIT = 1
METHODS = {"plain": "PLAIN", "login": "LOGIN"}
SERVICES = ("imap", "smtp")
SECRET_HEADER = "X-Encimap-Secret"  # noqa: S105 - a header name


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


def read_secret(path: str) -> bytes:
    """The shared secret nginx sends (`http_secret_file`); empty when none is configured."""
    if not path:
        return b""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"authsocket.http_secret_file: cannot read {path}: {exc}") from None
    if len(secret) < 16:
        raise ConfigError("authsocket.http_secret_file: the secret needs 16 characters or more")
    return secret


class AuthHTTP:
    def __init__(self, engine: AuthEngine, config: AuthSocketConfig) -> None:
        self.engine = engine
        self.upstreams = {
            "imap": upstream(config.imap_upstream, "imap_upstream"),
            "smtp": upstream(config.smtp_upstream, "smtp_upstream"),
        }
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in config.http_allowed_peers]
        self.secret = read_secret(config.http_secret_file)
        self.trust_client_networks = config.http_trust_client_networks

    async def handle(self, request: Request) -> Response:
        if not self.peer_allowed(request.client_ip):  # serve() refuses them first already
            return FORBIDDEN
        if self.secret and not hmac.compare_digest(
            request.headers.get(SECRET_HEADER.lower(), "").encode("latin-1"), self.secret
        ):
            log.warning("authsocket.http_refused", peer=request.client_ip, reason="secret")
            return FORBIDDEN
        if request.method not in ("GET", "POST"):
            return Response(405, b"GET only\n")
        if client_ip(request.headers) is None:
            log.warning("authsocket.http_refused", peer=request.client_ip, reason="client-ip")
            return Response(400, b"Client-IP missing or invalid\n")
        _status, headers = await self.answer(request.headers)
        return Response(200, headers=headers)

    def peer_allowed(self, peer: str) -> bool:
        """Whether a connection from `peer` may ask at all (logged when not)."""
        if peer == "local":  # a unix socket: its file mode decides who connects
            return True
        if in_networks(peer, self.allowed):
            return True
        log.warning("authsocket.http_refused", peer=peer, reason="peer")
        return False

    async def answer(self, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """(status, response headers) for nginx's request headers (names lower-cased)."""
        protocol = headers.get("auth-protocol", "").lower()
        method = METHODS.get(headers.get("auth-method", "").lower())
        username = unquote(headers.get("auth-user", ""))
        password = unquote(headers.get("auth-pass", ""))
        service = protocol if protocol in SERVICES else "smtp"
        how: dict = {
            "service": service,
            "client_ip": client_ip(headers),
            "exempt_trusted": self.trust_client_networks,
            "secured": headers.get("auth-ssl", "").lower() == "on",
            "method": method or headers.get("auth-method", "none"),
        }
        try:
            if method is None:
                await self.engine.refuse(username, "unknown mechanism", **how)
            if protocol not in SERVICES:
                await self.engine.refuse(username, "unknown protocol", **how)
            await self.engine.authenticate(username, password, **how)
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


def in_networks(peer: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether the address `peer` lies in one of `networks` (False for anything else)."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in networks)


def client_ip(headers: dict[str, str]) -> str | None:
    """nginx's `Client-IP` as a normalised address, None when missing or not an address."""
    try:
        return str(ipaddress.ip_address(headers.get("client-ip", "").strip()))
    except ValueError:
        return None
