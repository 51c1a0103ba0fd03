"""Worker processes: `workers = N` in a component's section (`[intake]`, `[imap]`) runs N
processes of that component that share its listening ports.

The first process (the one systemd started) spawns N-1 workers. Each binds the TCP listeners
itself with SO_REUSEPORT, so the kernel spreads connections over the processes; a Unix socket
cannot be shared that way, so its listening descriptor is inherited instead. A worker receives
the parent's validated configuration on stdin, dies with its parent (PR_SET_PDEATHSIG), and is
restarted if it exits while the service runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import socket
import sys
from typing import Any

from encimap import config as config_module
from encimap import logs
from encimap.service import eventloop

log = logs.get_logger(__name__)

WORKER_ENV = "ENCIMAP_WORKER"
SOCKETS_ENV = "ENCIMAP_WORKER_SOCKETS"  # JSON {listener spec: inherited descriptor}
READY_LINE = b"ready\n"
START_TIMEOUT = 60.0
RESTART_DELAY = 1.0
_PR_SET_PDEATHSIG = 1


def worker_number() -> int | None:
    """This process's worker number, or None in the parent (or a single-process service)."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value else None


def inherited_socket(spec: str) -> socket.socket | None:
    """The listening socket for `spec` this worker got from its parent, if any."""
    fd = json.loads(os.environ.get(SOCKETS_ENV) or "{}").get(spec)
    return None if fd is None else socket.socket(fileno=fd)


def unix_sockets(listen: str | list[str], servers: list[asyncio.Server]) -> dict[str, int]:
    """Unix listeners' descriptors, for workers to inherit (TCP ones use SO_REUSEPORT)."""
    found = {}
    for spec, server in zip(config_module.listeners(listen), servers, strict=True):
        if config_module.parse_listener(spec)[0] == "unix":
            found[spec] = server.sockets[0].fileno()
    return found


class WorkerError(Exception):
    pass


class Workers:
    """The extra worker processes of one component, seen from the parent. `environment`
    is added to theirs (what the parent shares with them, such as encimap.service.slots'
    directory)."""

    def __init__(
        self,
        component: str,
        config: config_module.Config,
        sockets: dict[str, int],
        count: int,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.component = component
        self._environment = environment or {}
        self._payload = json.dumps(config_module.to_mapping(config)).encode()
        self._sockets = json.dumps(sockets)
        self._fds = tuple(sockets.values())
        self._count = count
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs.values()]

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(number) for number in range(1, self._count + 1)))

    async def _spawn(self, number: int) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "encimap.service.workers",
            self.component,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={
                **_worker_environment(),
                **self._environment,
                WORKER_ENV: str(number),
                SOCKETS_ENV: self._sockets,
            },
            pass_fds=self._fds,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(self._payload)
        proc.stdin.close()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        if line != READY_LINE:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise WorkerError(
                f"{self.component} worker {number} did not start (exit {proc.returncode})"
            )
        self._procs[number] = proc
        log.info("worker.started", component=self.component, worker=number, pid=proc.pid)
        watcher = asyncio.create_task(self._watch(number, proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, number: int, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._stopping:
            return
        log.warning(
            "worker.exited", component=self.component, worker=number, pid=proc.pid, code=code
        )
        while not self._stopping:
            await asyncio.sleep(RESTART_DELAY)
            try:
                await self._spawn(number)
                return
            except (OSError, WorkerError) as exc:
                log.error("worker.restart_failed", worker=number, error=str(exc))

    def signal(self, signum: int) -> None:
        for proc in self._procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    def stop(self) -> None:
        """Ask every worker to drain and exit (SIGTERM)."""
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        self.signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> None:
        """Wait for the workers to exit; kill what is left after `timeout`."""
        procs = list(self._procs.values())
        if not procs:
            return
        _done, pending = await asyncio.wait(
            [asyncio.ensure_future(proc.wait()) for proc in procs], timeout=timeout
        )
        if pending:
            self.signal(signal.SIGKILL)
            await asyncio.wait(pending, timeout=5)


def _worker_environment() -> dict[str, str]:
    """The parent's environment minus systemd's: only the main process talks to systemd."""
    systemd = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
    return {key: value for key, value in os.environ.items() if key not in systemd}


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


async def _serve(component: str, cfg: config_module.Config) -> int:
    from encimap import service

    ready = asyncio.Event()

    async def announce() -> None:
        await ready.wait()
        os.write(sys.stdout.fileno(), READY_LINE)

    announcer = asyncio.create_task(announce())
    # The main process serves the metrics endpoint; workers would compete for its port.
    cfg = dataclasses.replace(cfg, metrics=dataclasses.replace(cfg.metrics, **{component: ""}))
    try:
        return await service.run(cfg, component, ready=ready)
    finally:
        announcer.cancel()


def main() -> int:
    _die_with_parent()
    component = sys.argv[1]
    raw: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    cfg = config_module.from_mapping(raw)
    return eventloop.run(_serve(component, cfg), cfg.service.event_loop)


if __name__ == "__main__":
    raise SystemExit(main())
