"""The chunked armour: CRC-24 combined across chunks equals the CRC of the whole, and the
armoured text carries what the binding's own armour of the same bytes carries (it wraps at 64
columns, we at 76 like the S/MIME base64)."""

from __future__ import annotations

import io
import os

import pysequoia
import pytest

from encimap.openpgp.armor import CHUNK, crc24, write_armored


def bitwise_crc24(data: bytes) -> int:
    """RFC 4880 section 6.1, bit by bit."""
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


@pytest.mark.parametrize("size", [1, 2, 3, 57, 1000, CHUNK - 1, CHUNK, CHUNK + 5, 2 * CHUNK + 100])
def test_armour_equals_the_bindings(size: int) -> None:
    data = os.urandom(size)
    out = io.BytesIO()
    write_armored(data, out)
    ours = out.getvalue().split(b"\r\n")
    theirs = pysequoia.armor(data, pysequoia.ArmorKind.Message).encode().rstrip(b"\n").split(b"\n")
    assert ours[:2] == theirs[:2] and ours[-2:] == theirs[-2:]  # BEGIN, blank; CRC, END
    assert b"".join(ours[2:-2]) == b"".join(theirs[2:-2])
    assert max(len(line) for line in ours) <= 76


def test_combined_crc_equals_the_bitwise_one() -> None:
    data = os.urandom(5000)
    view = memoryview(data)
    chunks = [view[:1], view[1:1000], view[1000:1001], view[1001:]]
    assert crc24(chunks) == crc24([view]) == bitwise_crc24(data)
