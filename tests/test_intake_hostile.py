"""Hostile content over LMTP to `encimap serve intake` running as its own process: every
message is stored encrypted (OpenSSL decrypts it to its content) or, when it announces itself
as already encrypted, stored as it is; the process stays up; its peak resident memory grows
by a bounded multiple of the largest message and its CPU time about linearly with the size.

The per-operation linearity of each case is in test_mime_hostile (operation counts)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from encimap import mime, mimeinfo
from encimap.pgcluster import free_port
from tests import hostile_mail
from tests.intake_support import LMTPClient, add_certificate, openssl_decrypt, stored_messages
from tests.support import Databases, make_vaultbox
from tests.test_intake_process import start_intake

ADDRESS = "hostile@vault.test"
# Already-encrypted mail is stored as it is, so its hostile structure is what IMAP describes.
PASSTHROUGH = {
    "encrypted-nested": lambda n: hostile_mail.nested_multipart(
        n, media=b'multipart/encrypted; protocol="application/pgp-encrypted"'
    ),
    "encrypted-many-parts": lambda n: hostile_mail.many_parts(
        n, media=b'multipart/encrypted; protocol="application/pgp-encrypted"'
    ),
}
PASSTHROUGH_SIZES = {"encrypted-nested": 2500, "encrypted-many-parts": 25000}
# Peak RSS growth allowed, in multiples of the largest message, plus a fixed allowance for
# what any delivery allocates once (pools, caches, the first worker thread).
RSS_FACTOR = 40
RSS_ALLOWANCE = 64 << 20


@pytest.fixture(scope="module")
def box(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> dict:
    async def make() -> dict:
        made = await make_vaultbox(databases, ADDRESS)
        key = await add_certificate(databases, made.vaultbox, tmp_path_factory.mktemp("keys"))
        return {"vaultbox": made.vaultbox, "key": key}

    return asyncio.run(make())


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _expected_content(data: bytes) -> bytes:
    body = data[mimeinfo.split_header(data, 0, len(data))[1] :]
    return body if b"binary" in data else mime.to_crlf(body)


async def _deliver(port: int, data: bytes) -> str:
    client = await LMTPClient.connect(port)
    try:
        await client.command("LHLO hostile.test")
        _, replies = await client.transaction("a@sender.test", [ADDRESS], data)
    finally:
        await client.close()
    assert len(replies) == 1, replies
    return replies[0]


async def test_hostile_messages_over_lmtp(databases, box, tmp_path):
    port = free_port()
    proc = start_intake(databases, tmp_path, port)
    cases = {
        **{name: (build, n) for name, (build, n) in hostile_mail.CASES.items()},
        **{name: (PASSTHROUGH[name], PASSTHROUGH_SIZES[name]) for name in PASSTHROUGH},
    }
    try:
        before = _status(proc.pid)
        cpu: dict[int, float] = {1: 0.0, 4: 0.0}
        largest = 0
        for factor in (1, 4):
            for name, (build, n) in cases.items():
                data = build(n * factor)
                largest = max(largest, len(data))
                started = _cpu_seconds(proc.pid)
                reply = await _deliver(port, data)
                cpu[factor] += _cpu_seconds(proc.pid) - started
                assert reply.startswith("250 2.0.0"), (name, factor, reply)
                stored = bytes(
                    (await stored_messages(databases, box["vaultbox"]))[-1]["body_encrypted"]
                )
                if name in PASSTHROUGH:
                    assert stored.endswith(data), name  # trace fields in front, else as sent
                else:
                    plain = openssl_decrypt(stored, box["key"])
                    assert plain.endswith(_expected_content(data)), name
        after = _status(proc.pid)
        # a 10 MB header line: refused, as every line over 1,000 octets
        long_line = hostile_mail.HEAD + b"X-Long: " + b"a" * 10_000_000 + b"\r\n\r\nbody\r\n"
        assert (await _deliver(port, long_line)).startswith("500 5.5.2")
        # still serving an ordinary message
        assert (await _deliver(port, b"Subject: after\r\n\r\nfine\r\n")).startswith("250")
        assert proc.poll() is None
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    growth = after["VmHWM"] - before["VmRSS"]
    assert growth <= RSS_FACTOR * largest + RSS_ALLOWANCE, (growth, largest)
    # four times the input: about four times the CPU (a quadratic case would be ~16 times)
    print(f"cpu {cpu}, rss growth {growth >> 20} MiB, largest {largest >> 20} MiB")
    assert cpu[4] <= 8 * cpu[1], cpu
