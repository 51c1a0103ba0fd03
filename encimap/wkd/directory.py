"""What the Web Key Directory answers, without I/O: paths, hashed local parts, responses.

Direct method: `https://DOMAIN/.well-known/openpgpkey/hu/HASH?l=LOCAL` (the domain is the
request's Host). Advanced method: `https://openpgpkey.DOMAIN/.well-known/openpgpkey/DOMAIN/
hu/HASH?l=LOCAL`. HASH is the z-base-32 encoded SHA-1 of the local part with its ASCII
letters lower-cased, and only those (draft-koch-openpgp-webkey-service section 3.1; GnuPG's
`gpg-wks-client --print-wkd-hash` hashes "JÖRG" as "jÖrg"). The answer is the binary (not
armoured) public key, keys concatenated when a vaultbox has several; 404 for anything else.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import parse_qs

import pysequoia

from encimap.service.http import Request, Response

PREFIX = "/.well-known/openpgpkey/"
_ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"
_HASHED = re.compile(r"^[ybndrfg8ejkmcpqxot1uwisza345h769]{32}$")
_ASCII_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")

# (domain) -> [(alias, armoured key)] of the domain's active vaultboxes with keys.
Lookup = Callable[[str], Awaitable[Sequence[tuple[str, str]]]]


def zbase32(data: bytes) -> str:
    """z-base-32 (RFC 6189 section 5.1.6) of `data`, without padding."""
    bits = int.from_bytes(data, "big")
    length = len(data) * 8
    pad = -length % 5
    bits <<= pad
    return "".join(_ZBASE32[(bits >> shift) & 31] for shift in range(length + pad - 5, -1, -5))


def hashed_local_part(local: str) -> str:
    """The `hu` path element for the local part of an address."""
    lowered = local.encode("utf-8").translate(_ASCII_LOWER)
    return zbase32(hashlib.sha1(lowered).digest())  # noqa: S324 - the draft's choice


def parse(request: Request) -> tuple[str, str] | str | None:
    """(domain, hash) for a key request, "policy" for a policy file, None otherwise."""
    if not request.path.startswith(PREFIX):
        return None
    parts = request.path[len(PREFIX) :].split("/")
    host = request.headers.get("host", "").rsplit(":", 1)[0].lower()
    if parts[0] not in ("hu", "policy", "submission-address") and len(parts) > 1:
        domain, parts = parts[0].lower(), parts[1:]  # advanced method
    else:
        domain = host
    if parts == ["policy"]:
        return "policy"
    if len(parts) == 2 and parts[0] == "hu" and _HASHED.match(parts[1]) and domain:
        return domain, parts[1]
    return None


def _names(alias: str, hashed: str, local: str | None) -> bool:
    """Whether a request for `hashed` (with `l=local`, if given) asks for `alias`. The hash
    lower-cases ASCII only, so "JÖRG" and the stored "jörg" hash apart; the `l` parameter (the
    local part as the sender wrote it, draft section 3.1) then names the vaultbox, compared
    case-insensitively as addresses are, when it is the one hashed."""
    if hashed_local_part(alias) == hashed:
        return True
    return (
        local is not None
        and hashed_local_part(local) == hashed
        and local.casefold() == alias.casefold()
    )


async def answer(request: Request, lookup: Lookup) -> Response:
    if request.method not in ("GET", "HEAD"):
        return Response(405, b"GET only\n")
    wanted = parse(request)
    if wanted == "policy":
        return Response(200, b"", content_type="text/plain; charset=utf-8")
    if wanted is None:
        return Response(404, b"not found\n")
    domain, hashed = wanted
    local = parse_qs(request.query).get("l", [None])[0]
    keys = [
        bytes(pysequoia.Cert.from_bytes(armored.encode("utf-8")))
        for alias, armored in await lookup(domain)
        if _names(alias, hashed, local)
    ]
    if not keys:
        return Response(404, b"not found\n")
    body = b"".join(keys)
    if request.method == "HEAD":
        return Response(200, b"", content_type="application/octet-stream")
    return Response(
        200,
        body,
        content_type="application/octet-stream",
        headers={"Access-Control-Allow-Origin": "*"},
    )
