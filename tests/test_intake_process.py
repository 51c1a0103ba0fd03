"""`python -m encimap serve intake` as a real process: SIGKILL loses nothing acknowledged,
SIGTERM drains and exits 0, worker processes share the port."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from encimap.pgcluster import free_port
from tests.intake_support import LMTPClient, add_certificate, stored_messages
from tests.support import REPO, Databases, make_vaultbox, write_config_file


@pytest.fixture(scope="module")
def vaultbox(databases: Databases, tmp_path_factory: pytest.TempPathFactory):
    async def make():
        box = (await make_vaultbox(databases, "flood@vault.test")).vaultbox
        await add_certificate(databases, box, tmp_path_factory.mktemp("keys"))
        return box

    return asyncio.run(make())


def start_intake(
    databases: Databases, tmp_path: Path, port: int, workers: int = 1, event_loop: str = ""
):
    """`encimap serve intake`; `event_loop` "" leaves service.event_loop at its default."""
    config = write_config_file(
        tmp_path / "encimap.toml",
        databases,
        f'[intake]\nlisten = "127.0.0.1:{port}"\nhostname = "mx.test"\nworkers = {workers}\n'
        "[service]\ndrain_timeout = 5.0\n"
        + (f'event_loop = "{event_loop}"\n' if event_loop else ""),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "encimap", "--config", str(config), "serve", "intake"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "intake.log").open("wb"),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "intake.log").read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("intake did not listen")


async def flood(port: int, acknowledged: list[str], stop: asyncio.Event, tag: str) -> None:
    """Deliver numbered messages until `stop` or the connection dies; record every 250."""
    try:
        client = await LMTPClient.connect(port)
        await client.command("LHLO flood.test")
        number = 0
        while not stop.is_set():
            number += 1
            message_id = f"<{tag}-{number}@flood.test>"
            body = ("x" * 76 + "\r\n") * 26
            data = f"Message-ID: {message_id}\r\nSubject: n{number}\r\n\r\n{body}"
            _, replies = await client.transaction("a@b.test", ["flood@vault.test"], data.encode())
            if replies and replies[0].startswith("250"):
                acknowledged.append(message_id)
    except (ConnectionError, OSError, TimeoutError, asyncio.IncompleteReadError):
        return


async def test_sigkill_during_flood_loses_nothing_acknowledged(databases, vaultbox, tmp_path):
    port = free_port()
    proc = start_intake(databases, tmp_path, port)
    acknowledged: list[str] = []
    stop = asyncio.Event()
    try:
        floods = [
            asyncio.create_task(flood(port, acknowledged, stop, f"kill{n}")) for n in range(4)
        ]
        deadline = time.monotonic() + 20
        while len(acknowledged) < 40 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        await asyncio.wait_for(asyncio.gather(*floods), 30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    assert len(acknowledged) >= 40
    stored = {row["message_id"] for row in await stored_messages(databases, vaultbox)}
    missing = [message_id for message_id in acknowledged if message_id not in stored]
    assert missing == []


def log_entries(tmp_path: Path, event: str) -> list[dict]:
    return [
        json.loads(line)
        for line in (tmp_path / "intake.log").read_text().splitlines()
        if f'"event": "{event}"' in line
    ]


@pytest.mark.parametrize(("configured", "expected"), [("", "uvloop"), ("asyncio", "asyncio")])
async def test_sigterm_finishes_sessions_and_exits_zero(
    databases, vaultbox, tmp_path, configured, expected
):
    port = free_port()
    proc = start_intake(databases, tmp_path, port, event_loop=configured)
    try:
        idle = await LMTPClient.connect(port)
        await idle.command("LHLO idle.test")
        busy = await LMTPClient.connect(port)
        await busy.command("LHLO busy.test")
        await busy.command("MAIL FROM:<a@b.test>")
        await busy.command("RCPT TO:<flood@vault.test>")
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        # The idle session is told goodbye; the one inside a transaction may finish it.
        assert (await idle.reply())[0].startswith("421")
        replies = await busy.send_data(
            b"Message-ID: <term@flood.test>\r\nSubject: t\r\n\r\nlast one\r\n", 1
        )
        assert replies[0].startswith("250")
        assert (await busy.reply())[0].startswith("421")
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stored = {row["message_id"] for row in await stored_messages(databases, vaultbox)}
    assert "<term@flood.test>" in stored
    assert [entry["event_loop"] for entry in log_entries(tmp_path, "service.ready")] == [expected]


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


async def test_workers_share_the_port(databases, vaultbox, tmp_path):
    port = free_port()
    proc = start_intake(databases, tmp_path, port, workers=2)
    try:
        # the parent listens first: wait until its worker does too (its log goes to the
        # same file), or every connection may reach the parent
        deadline = time.monotonic() + 30
        while len(log_entries(tmp_path, "intake.listening")) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "worker did not listen"
            await asyncio.sleep(0.1)
        workers = children(proc.pid)
        assert len(workers) == 1
        acknowledged: list[str] = []
        stop = asyncio.Event()
        floods = [asyncio.create_task(flood(port, acknowledged, stop, f"w{n}")) for n in range(16)]
        await asyncio.sleep(2)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*floods), 30)
        assert acknowledged
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        assert _gone(workers[0])
    finally:
        if proc.poll() is None:
            proc.kill()
    # Both processes served sessions (16 connections all hashed to one socket: 2**-15).
    sessions = log_entries(tmp_path, "session")
    assert {entry["pid"] for entry in sessions} == {proc.pid, workers[0]}
    # The parent and its worker, each on the default loop.
    ready = log_entries(tmp_path, "service.ready")
    assert [entry["event_loop"] for entry in ready] == ["uvloop", "uvloop"]
    stored = {row["message_id"] for row in await stored_messages(databases, vaultbox)}
    assert set(acknowledged) <= stored


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True
