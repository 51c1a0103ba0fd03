"""`encimap serve imap` with `imap.workers = 2`: two processes share the port, the per-user
limit counts the sessions of both, mail stored through one is seen by sessions of the other,
a killed worker is restarted and leaves no session counted, and SIGTERM stops both."""

from __future__ import annotations

import asyncio
import imaplib
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
from tests.imap_support import make_box, plain_message
from tests.support import REPO, write_config_file

LIMIT = 6
PER_IP = 40  # above the most connections the later steps hold at once (16 + 16)
CONNECTIONS = 16  # all hashed to one worker: 2**-15


@pytest.fixture
def box(databases, tmp_path):
    return asyncio.run(make_box(databases, "workers@vault.test", tmp_path))


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def log_entries(log: Path, event: str) -> list[dict]:
    return [
        json.loads(line) for line in log.read_text().splitlines() if f'"event": "{event}"' in line
    ]


def wait_until(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def start_imap(databases, tls_files, tmp_path: Path, port: int) -> subprocess.Popen:
    cert, key = tls_files
    config = write_config_file(
        tmp_path / "encimap.toml",
        databases,
        f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        f'[imap]\nlisten = "127.0.0.1:{port}"\ntls_listen = []\nworkers = 2\n'
        f'trusted_networks = ["127.0.0.0/8"]\nmax_connections_per_user = {LIMIT}\n'
        f"max_connections_per_ip = {PER_IP}\n"
        "[service]\ndrain_timeout = 5.0\n",
    )
    log = tmp_path / "imap.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "encimap", "--config", str(config), "serve", "imap"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    wait_until(
        lambda: proc.poll() is None and len(log_entries(log, "imap.listening")) == 2,
        f"both processes listen: {log.read_text()}",
    )
    return proc


def connect_all(port: int, count: int) -> list[imaplib.IMAP4]:
    return [imaplib.IMAP4("127.0.0.1", port, timeout=30) for _ in range(count)]


def log_in(clients: list[imaplib.IMAP4], box) -> list[imaplib.IMAP4]:
    """The clients whose LOGIN succeeded; the others must have been refused for the limit."""
    logged_in = []
    for client in clients:
        try:
            client.login(box.username, box.password)
            logged_in.append(client)
        except imaplib.IMAP4.error as exc:
            assert "[LIMIT]" in str(exc)
    return logged_in


def alive(client: imaplib.IMAP4) -> bool:
    try:
        return client.noop()[0] == "OK"
    except (imaplib.IMAP4.abort, OSError):
        return False


def test_two_workers_share_the_port_and_the_per_user_limit(databases, tls_files, tmp_path, box):
    port = free_port()
    proc = start_imap(databases, tls_files, tmp_path, port)
    try:
        [worker] = children(proc.pid)
        raw = [socket.create_connection(("127.0.0.1", port)) for _ in range(PER_IP + 4)]
        greetings = [sock.makefile("rb").readline() for sock in raw]
        assert sum(line.startswith(b"* OK") for line in greetings) == PER_IP
        assert sum(line.startswith(b"* BYE") for line in greetings) == 4
        for sock in raw:
            sock.close()
        log = tmp_path / "imap.log"
        wait_until(lambda: len(log_entries(log, "imap.session")) == PER_IP, "the server saw")

        clients = connect_all(port, CONNECTIONS)
        sessions = log_in(clients, box)
        assert len(sessions) == LIMIT  # per process it would be up to 2 * LIMIT
        for client in sessions:
            client.select("INBOX")
            assert client.response("EXISTS")[1] == [b"0"]  # (and forgotten)
        assert sessions[0].append("INBOX", None, None, plain_message(1))[0] == "OK"
        for client in sessions[1:]:
            client.noop()
            assert client.response("EXISTS")[1] == [b"1"]
        for client in clients:
            client.logout()
        ended = PER_IP + CONNECTIONS
        wait_until(lambda: len(log_entries(log, "imap.session")) == ended, "every session ended")
        served = {entry["pid"] for entry in log_entries(log, "imap.session")}
        assert served == {proc.pid, worker}

        # A killed worker's sessions end and stop counting; the worker comes back.
        sessions = log_in(connect_all(port, CONNECTIONS), box)
        assert len(sessions) == LIMIT
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: children(proc.pid) not in ([], [worker]), "the worker restarted")
        survivors = [client for client in sessions if alive(client)]
        again = log_in(connect_all(port, CONNECTIONS), box)
        assert len(again) == LIMIT - len(survivors)

        [restarted] = children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        wait_until(lambda: gone(restarted), "the worker stopped with its parent")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
