"""ASCII armour (RFC 4880 section 6) of a large OpenPGP message, CRLF lines, without holding a
second armoured copy of it.

The CRC-24 line is needed: GnuPG 2.2 finds the end of unpadded base64 data only by it (without
it, it reads "-----END" as data). The binding computes CRC-24 only as part of armouring, so
each chunk is armoured on its own (a transient chunk-sized string) and the chunks' CRCs are
combined with CRC arithmetic: CRC is linear, so for a CRC register over GF(2) with initial
value I, crc(A || B) = (crc(A) xor I) * x^(8|B|) xor crc(B), modulo the CRC polynomial.
"""

from __future__ import annotations

import base64
from typing import BinaryIO

import pysequoia

from encimap import mime

CRC24_INIT = 0xB704CE
CRC24_POLY = 0x1864CFB  # RFC 4880 section 6.1, x^24 included
CHUNK = mime.BASE64_LINE_BYTES * 16384  # whole base64 lines, so no carry between chunks
BEGIN = b"-----BEGIN PGP MESSAGE-----\r\n\r\n"
END = b"-----END PGP MESSAGE-----"


def write_armored(data: bytes, out: BinaryIO) -> None:
    """`data` armoured as a PGP MESSAGE, lines of 76 characters ended by CRLF; no final CRLF."""
    out.write(BEGIN)
    view = memoryview(data)
    chunks = [view[start : start + CHUNK] for start in range(0, len(view), CHUNK)]
    mime.write_base64(chunks, out)
    out.write(b"=" + base64.b64encode(crc24(chunks).to_bytes(3, "big")) + b"\r\n" + END)


def crc24(chunks: list[memoryview]) -> int:
    """CRC-24 of the concatenated chunks."""
    crc = CRC24_INIT
    for chunk in chunks:
        if not chunk:
            continue
        armored = pysequoia.armor(bytes(chunk), pysequoia.ArmorKind.Message)
        line = next(line for line in reversed(armored.splitlines()) if line.startswith("="))
        chunk_crc = int.from_bytes(base64.b64decode(line[1:]), "big")
        crc = _mulmod(crc ^ CRC24_INIT, _x_power(8 * len(chunk))) ^ chunk_crc
    return crc


def _mulmod(a: int, b: int) -> int:
    """a * b in GF(2)[x] modulo the CRC-24 polynomial."""
    result = 0
    while b:
        if b & 1:
            result ^= a
        b >>= 1
        a <<= 1
        if a & 0x1000000:
            a ^= CRC24_POLY
    return result


def _x_power(exponent: int) -> int:
    """x^exponent modulo the CRC-24 polynomial."""
    result, base = 1, 2
    while exponent:
        if exponent & 1:
            result = _mulmod(result, base)
        base = _mulmod(base, base)
        exponent >>= 1
    return result
