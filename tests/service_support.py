"""Running a service: in this process (`running_service`), or as a real `encimap serve ...`
process with a NOTIFY_SOCKET the test owns."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

from encimap import config as config_module
from encimap import service
from encimap.pgcluster import free_port
from tests.support import REPO, Databases, write_config_file


@contextlib.asynccontextmanager
async def running_service(
    cfg: config_module.Config, which: str, *, drain_timeout: float | None = None
) -> AsyncIterator[asyncio.Event]:
    """`which` served on this test's loop until the block ends (then stopped and drained).

    Yields the stop event: setting it inside the block stops the service early, as SIGTERM
    would. A service that fails to start raises its start-up error here."""
    if drain_timeout is not None:
        cfg = dataclasses.replace(
            cfg, service=config_module.ServiceConfig(drain_timeout=drain_timeout)
        )
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        service.run(cfg, which, ready=ready, stop=stop, configure_logs=False)
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiter.cancel()
        task.cancel()  # if it is still starting
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)  # raises the start-up error
        raise AssertionError(f"{which} did not start")
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def service_config(
    path: Path, databases: Databases, tls_files: tuple[Path, Path], extra: str = ""
) -> tuple[Path, dict[str, int]]:
    """A config file with every listener on a free loopback port; returns it and the ports."""
    names = ["intake", "submission", "relay", "imap", "imaps", "metrics", "auth_http"]
    ports = {name: free_port() for name in names}
    text = (
        f'[tls]\ncert = "{tls_files[0]}"\nkey = "{tls_files[1]}"\n'
        f'[intake]\nlisten = "127.0.0.1:{ports["intake"]}"\n'
        f'[submission]\nlisten = "127.0.0.1:{ports["submission"]}"\n'
        f'relay = "127.0.0.1:{ports["relay"]}"\n'
        f'[imap]\nlisten = "127.0.0.1:{ports["imap"]}"\n'
        f'tls_listen = "127.0.0.1:{ports["imaps"]}"\n'
        f'[authsocket]\nlisten = ["unix:{path.parent}/auth"]\n'
        f'http_listen = "127.0.0.1:{ports["auth_http"]}"\n'
        + "[metrics]\n"
        + "".join(
            f'{key} = "127.0.0.1:{ports["metrics"]}"\n'
            for key in ("listen", "intake", "submission", "authsocket", "imap")
        )
        + extra
    )
    return write_config_file(path, databases, text), ports


class NotifySocket:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[str] = []

    def wait_for(
        self, message: str, timeout: float = 30.0, process: subprocess.Popen | None = None
    ) -> float:
        """Wait until `message` arrives; return the monotonic time it did. Fails at once if
        `process` exits first (a port taken meanwhile, a bad configuration)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise AssertionError(f"process exited ({process.returncode}) before {message}")
            self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(data)
            if message in data.split("\n"):
                return time.monotonic()
        raise AssertionError(f"{message} not received; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@contextmanager
def serve_process(
    config_file: Path,
    which: str,
    *,
    env: dict[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "encimap", "--config", str(config_file), "serve", which],
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=None,
        pass_fds=pass_fds,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - test URL
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
