"""PROXY protocol v1 and v2 (HAProxy's spec) in front of IMAP (`imap.proxy_protocol`): the
load balancer's header names the real client, whose address then counts for
`trusted_networks`, throttling and logs. Without a valid header the connection is dropped."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_MAX = 107  # the spec's longest v1 line, CRLF included
_TIMEOUT = 10.0


class ProxyError(Exception):
    pass


def parse_v1(line: bytes) -> str | None:
    """The source address of a v1 line (`PROXY TCP4 src dst sport dport`), None for UNKNOWN."""
    parts = line.rstrip(b"\r\n").decode("ascii", "replace").split(" ")
    if parts[:1] != ["PROXY"] or len(parts) < 2:
        raise ProxyError("not a PROXY v1 header")
    if parts[1] == "UNKNOWN":
        return None
    if parts[1] not in ("TCP4", "TCP6") or len(parts) != 6:
        raise ProxyError("malformed PROXY v1 header")
    try:
        return str(ipaddress.ip_address(parts[2]))
    except ValueError:
        raise ProxyError("bad source address in PROXY header") from None


def parse_v2(header: bytes, body: bytes) -> str | None:
    """The source address of a v2 header (16 bytes) and its body; None for LOCAL/unspecified."""
    version_command, family = header[12], header[13]
    if version_command >> 4 != 2:
        raise ProxyError("unsupported PROXY version")
    if version_command & 0x0F == 0:  # LOCAL: the proxy's own health check
        return None
    if family >> 4 == 1 and len(body) >= 12:
        return str(ipaddress.IPv4Address(body[:4]))
    if family >> 4 == 2 and len(body) >= 36:
        return str(ipaddress.IPv6Address(body[:16]))
    return None


async def read_header(reader: asyncio.StreamReader) -> str | None:
    async with asyncio.timeout(_TIMEOUT):
        start = await reader.readexactly(12)
        if start == V2_SIGNATURE:
            rest = await reader.readexactly(4)
            (length,) = struct.unpack("!H", rest[2:])
            return parse_v2(start + rest, await reader.readexactly(length))
        line = start + await reader.readuntil(b"\n")
        if len(line) > _V1_MAX:
            raise ProxyError("PROXY v1 line too long")
        return parse_v1(line)
