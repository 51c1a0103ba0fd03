"""The Dovecot auth protocol (client side of `auth-client`, version 1.2), as pure functions.

Lines are TAB-separated and LF-terminated, at most 16 KiB. Values escape byte 0x01 as
"\\x01" "1", TAB as "\\x01" "t", CR as "\\x01" "r" and LF as "\\x01" "n". SASL PLAIN and
LOGIN payloads travel base64-encoded in `resp=` (initial response) or `CONT` lines.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass, field

MAX_LINE = 16 * 1024
MAJOR_VERSION = 1
MINOR_VERSION = 2
MECHANISMS = ("PLAIN", "LOGIN")
LOGIN_USERNAME_PROMPT = base64.b64encode(b"Username:").decode()  # VXNlcm5hbWU6
LOGIN_PASSWORD_PROMPT = base64.b64encode(b"Password:").decode()  # UGFzc3dvcmQ6
GENERIC_FAILURE = "Authentication failed"

_ESCAPES = {"\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n"}
_UNESCAPES = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n"}


class ProtocolError(Exception):
    """The peer broke the protocol; the connection ends."""


def escape(value: str) -> str:
    return "".join(_ESCAPES.get(char, char) for char in value)


def unescape(value: str) -> str:
    if "\x01" not in value:
        return value
    out, chars = [], iter(value)
    for char in chars:
        if char == "\x01":
            following = next(chars, "")
            out.append(_UNESCAPES.get(following, following))
        else:
            out.append(char)
    return "".join(out)


def split_line(line: bytes) -> list[str]:
    """A received line (without its LF) as unescaped fields."""
    try:
        text = line.decode()
    except UnicodeDecodeError:
        raise ProtocolError("line is not UTF-8") from None
    return [unescape(part) for part in text.rstrip("\r").split("\t")]


def join_line(*fields: str) -> bytes:
    return ("\t".join(escape(f) for f in fields) + "\n").encode()


def handshake(pid: int, connection_id: int, cookie: str | None = None) -> bytes:
    """What the server sends first: VERSION, the MECH lines, then SPID, CUID, COOKIE, DONE.

    Postfix takes an SPID before any MECH for a wrong socket, so the order matters.
    """
    lines = [join_line("VERSION", str(MAJOR_VERSION), str(MINOR_VERSION))]
    lines += [join_line("MECH", mech, "plaintext") for mech in MECHANISMS]
    lines += [
        join_line("SPID", str(pid)),
        join_line("CUID", str(connection_id)),
        join_line("COOKIE", cookie or secrets.token_hex(16)),
        join_line("DONE"),
    ]
    return b"".join(lines)


@dataclass(frozen=True)
class AuthRequest:
    id: str
    mechanism: str
    service: str = ""
    params: dict[str, str] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()
    initial_response: str | None = None

    @property
    def secured(self) -> bool:
        return "secured" in self.flags

    @property
    def client_ip(self) -> str | None:
        return self.params.get("rip")


def parse_auth(fields: list[str]) -> AuthRequest:
    """`AUTH <id> <mech> [key=value | flag]...` (fields without the command)."""
    if len(fields) < 2 or not _is_request_id(fields[0]):
        raise ProtocolError("AUTH needs an id and a mechanism")
    params: dict[str, str] = {}
    flags: set[str] = set()
    for arg in fields[2:]:
        key, sep, value = arg.partition("=")
        if sep:
            params[key] = value
        elif arg:
            flags.add(arg)
    resp = params.pop("resp", None)
    return AuthRequest(
        id=fields[0],
        mechanism=fields[1].upper(),
        service=params.pop("service", ""),
        params=params,
        flags=frozenset(flags),
        initial_response=resp,
    )


def _is_request_id(text: str) -> bool:
    """An unsigned 32-bit decimal number, as Dovecot's auth clients send (ASCII digits only:
    str.isdigit also takes other scripts' digits)."""
    return text.isascii() and text.isdigit() and len(text) <= 10 and int(text) < 2**32


def ok(request_id: str, user: str) -> bytes:
    return join_line("OK", request_id, f"user={user}")


def cont(request_id: str, challenge: str = "") -> bytes:
    return join_line("CONT", request_id, challenge)


def fail(request_id: str) -> bytes:
    """A refusal; the reason is shown to the SMTP client, so it never says what was wrong.

    There is no temporary FAIL here: Postfix 3.7 ignores Dovecot's `temp` flag and answers
    535, so a temporary failure is signalled by closing the connection (Postfix: 454 4.7.0).
    """
    return join_line("FAIL", request_id, f"reason={GENERIC_FAILURE}")


class SaslError(Exception):
    """A malformed SASL exchange (bad base64, wrong PLAIN layout): a plain failure.
    `username`: the login name when the exchange certainly held one, else ""."""

    def __init__(self, reason: str, username: str = "") -> None:
        super().__init__(reason)
        self.username = username


def decode_b64(data: str) -> str:
    try:
        return base64.b64decode(data.encode(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise SaslError("invalid base64") from None


def parse_plain(data: str) -> tuple[str, str]:
    """RFC 4616: `authzid NUL authcid NUL passwd`; acting for another identity is refused."""
    parts = decode_b64(data).split("\0")
    if len(parts) != 3 or not parts[1]:
        raise SaslError("malformed PLAIN response")
    authzid, authcid, password = parts
    if authzid and authzid != authcid:
        raise SaslError("authorization identity differs", authcid)
    return authcid, password
