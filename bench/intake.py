"""Intake throughput and CPU per message against a no-op aiosmtpd LMTP server, same client.

    python -m bench.intake [--messages 2000] [--sessions 4] [--size 10240] [--event-loop uvloop]

Runs a private PostgreSQL cluster, then (a) a no-op aiosmtpd LMTP server, (b) `encimap serve
intake` with 1 worker, (c) with 2 workers, all three on the same event loop implementation
(--event-loop, default uvloop), each loaded by Postfix's smtp-source (LMTP, 4 sessions reusing
their connection). Server CPU is utime+stime of the server process and its
workers from /proc; PostgreSQL's CPU (all cluster processes) is shown beside it. The intake
logs at level info (its one line per delivery is part of the cost). Then one 25 MB message:
time and the intake's peak RSS.

A diagnostic, not a target: (b0) is (b) against a copy of the database whose delivery
function does nothing (`encimap_deliver` replaced by one that returns a row). The intake does
all its own work, the same statement included, but PostgreSQL none, so (b0) shows how fast the
intake process alone can go on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from encimap.pgcluster import LocalCluster, free_port, prepare_databases
from encimap.store import certificates, vaultboxes

REPO = Path(__file__).resolve().parent.parent
ADDRESS = "bench@vault.test"
TICKS = os.sysconf("SC_CLK_TCK")
# The baseline runs on the same event loop implementation as the intake (argv[2]).
NOOP_SERVER = """
import asyncio, sys
from aiosmtpd.lmtp import LMTP
from encimap.service import eventloop
class Handler:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: LMTP(Handler(), hostname="noop", loop=loop), "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
eventloop.run(main(), sys.argv[2])
"""


@dataclass
class Result:
    name: str
    seconds: float
    cpu_ms: float
    messages: int
    postgres_cpu_ms: float = 0.0
    per_process_ms: tuple[float, ...] = ()  # each server process's CPU, same order as pids
    client_cpu_ms: float = 0.0

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_per_message(self) -> float:
        return self.cpu_ms / self.messages

    @property
    def postgres_cpu_per_message(self) -> float:
        return self.postgres_cpu_ms / self.messages

    @property
    def client_cpu_per_message(self) -> float:
        return self.client_cpu_ms / self.messages

    @property
    def busy(self) -> float:
        """Share of the machine's cores that client, server and PostgreSQL kept busy."""
        total = self.cpu_ms + self.postgres_cpu_ms + self.client_cpu_ms
        return total / (self.seconds * 1000 * (os.cpu_count() or 1))


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


def process_cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / TICKS  # utime, stime


class PostgresCPU:
    """CPU of the cluster's processes (postmaster, backends, background workers) since
    `start()`; a backend that starts later counts from zero."""

    def __init__(self, cluster: LocalCluster) -> None:
        self._postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
        self._before: dict[int, float] = {}

    def _now(self) -> dict[int, float]:
        pids = process_tree(self._postmaster)
        found = {}
        for pid in pids:
            try:
                found[pid] = process_cpu_ms(pid)
            except FileNotFoundError:
                continue
        return found

    def start(self) -> None:
        self._before = self._now()

    def used(self) -> float:
        return sum(ms - self._before.get(pid, 0.0) for pid, ms in self._now().items())


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not listen")


def load(port: int, args: argparse.Namespace) -> tuple[float, float]:
    """(seconds, the client's CPU milliseconds) for one smtp-source run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        ["smtp-source", "-L", "-d", "-s", str(args.sessions), "-m", str(args.messages),
         "-l", str(args.size), "-f", "sender@bench.test", "-t", ADDRESS, f"127.0.0.1:{port}"],
        check=True, timeout=600,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu * 1000


def measure(
    name: str, command: list[str], port: int, args: argparse.Namespace, postgres: PostgresCPU
) -> Result:
    proc = subprocess.Popen(
        command,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc)
        time.sleep(2)  # workers announce themselves after the parent listens
        pids = process_tree(proc.pid)
        before = [process_cpu_ms(pid) for pid in pids]
        postgres.start()
        seconds, client_ms = load(port, args)
        used = [process_cpu_ms(pid) - ms for pid, ms in zip(pids, before, strict=True)]
        return Result(
            name, seconds, sum(used), args.messages, postgres.used(), tuple(used), client_ms
        )
    finally:
        proc.terminate()
        proc.wait(30)


async def prepare(cluster: LocalCluster, encimap_name: str = "bench_encimap") -> tuple[str, str]:
    urls = await prepare_databases(cluster, "bench_motorical", encimap_name)
    conn = await asyncpg.connect(urls[1])
    try:
        box = await vaultboxes.create_vaultbox(
            conn, user_id=uuid.uuid4(), alias="bench", domain="vault.test", name=None
        )
        await certificates.add_generated_certificate(conn, vaultbox_id=box.id, address=ADDRESS)
    finally:
        await conn.close()
    return urls


DELIVER_ARGUMENTS = (
    "uuid, bytea, timestamptz, text, text, text, text, text, text, text[], text, text, text, "
    "jsonb, timestamptz, jsonb, double precision, text, text, integer, integer"
)


async def prepare_without_storing(cluster: LocalCluster) -> tuple[str, str]:
    """(b0)'s databases: as (b)'s, but `encimap_deliver` stores nothing and answers at once."""
    urls = await prepare(cluster, "bench_encimap_nothing_stored")
    conn = await asyncpg.connect(urls[1])
    try:
        async with conn.transaction():
            await conn.execute(
                f"ALTER FUNCTION encimap_deliver({DELIVER_ARGUMENTS}) RENAME TO deliver_kept;"
                f"CREATE FUNCTION encimap_deliver({DELIVER_ARGUMENTS}) RETURNS TABLE "
                "(email_id uuid, mailbox_id bigint, uid bigint, duplicate boolean) LANGUAGE sql "
                "AS $$ SELECT gen_random_uuid(), 0::bigint, 0::bigint, false $$;"
                f"GRANT EXECUTE ON FUNCTION encimap_deliver({DELIVER_ARGUMENTS}) TO encimap_intake"
            )
    finally:
        await conn.close()
    return urls


async def stored_count(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM encrypted_emails")
        duplicates = await conn.fetchval(
            "SELECT count(*) FROM email_processing_logs WHERE outcome = 'duplicate'"
        )
        return stored, duplicates
    finally:
        await conn.close()


def config_file(
    directory: Path, urls: tuple[str, str], port: int, workers: int, event_loop: str
) -> Path:
    path = directory / f"intake-{workers}.toml"
    path.write_text(
        f'[database]\nmotorical_url = "{urls[0]}"\nencimap_url = "{urls[1]}"\n'
        f'[intake]\nlisten = "127.0.0.1:{port}"\nhostname = "bench.test"\nworkers = {workers}\n'
        f'[log]\nlevel = "info"\n[service]\nevent_loop = "{event_loop}"\n'
    )
    return path


def intake_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "encimap", "--config", str(config), "serve", "intake"]


def big_message(port: int, config: Path) -> tuple[float, int]:
    """(seconds, peak RSS in kB) for one 25 MB message through `encimap serve intake`."""
    proc = subprocess.Popen(
        intake_command(config),
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc)
        line = b"y" * 76 + b"\r\n"
        body = line * (25 * 1024 * 1024 // len(line))
        data = b"Subject: big\r\nMessage-ID: <big@bench.test>\r\n\r\n" + body
        started = time.perf_counter()
        with smtplib.LMTP("127.0.0.1", port) as client:
            client.sendmail("sender@bench.test", [ADDRESS], data)
        seconds = time.perf_counter() - started
        status = Path(f"/proc/{proc.pid}/status").read_text()
        peak = int(next(x for x in status.splitlines() if x.startswith("VmHWM")).split()[1])
        return seconds, peak
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="loop of the intake and of the baseline")  # fmt: skip
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="encimap-bench-"))
    cluster = LocalCluster(base / "pg")
    cluster.start()
    try:
        urls = asyncio.run(prepare(cluster))
        results = []
        postgres = PostgresCPU(cluster)
        port = free_port()
        noop = [sys.executable, "-c", NOOP_SERVER, str(port), args.event_loop]
        results.append(measure("(a) no-op aiosmtpd LMTP", noop, port, args, postgres))
        for workers in (1, 2):
            port = free_port()
            command = intake_command(config_file(base, urls, port, workers, args.event_loop))
            results.append(measure(f"({'bc'[workers - 1]}) intake, {workers} worker(s)",
                                   command, port, args, postgres))  # fmt: skip
        stored, duplicates = asyncio.run(stored_count(urls[1]))
        port = free_port()
        nothing_stored_urls = asyncio.run(prepare_without_storing(cluster))
        command = intake_command(config_file(base, nothing_stored_urls, port, 1, args.event_loop))
        results.append(measure("(b0) (b), nothing stored", command, port, args, postgres))
        port = free_port()
        seconds, peak_kb = big_message(port, config_file(base, urls, port, 1, args.event_loop))
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)

    a, b, c, nothing_stored = results
    print(f"{args.messages} messages of {args.size} bytes, {args.sessions} LMTP sessions "
          f"(smtp-source -L -d), {os.cpu_count()} cores, event loop {args.event_loop} "
          "(servers (a)-(c))")  # fmt: skip
    for result in results:
        print(f"  {result.name:28} {result.rate:8.1f} msg/s  "
              f"{result.cpu_per_message:6.2f} CPU ms/msg  "
              f"(+ PostgreSQL {result.postgres_cpu_per_message:5.2f}, "
              f"client {result.client_cpu_per_message:4.2f}; "
              f"cores busy {result.busy:4.0%})")  # fmt: skip
        if len(result.per_process_ms) > 1:
            shares = ", ".join(f"{ms / result.cpu_ms:.0%}" for ms in result.per_process_ms)
            print(f"  {'':28} CPU share per process: {shares}")
    print(f"  stored rows {stored} (expected {2 * args.messages}), duplicates {duplicates}")
    print(f"  (b)/(a) msg/s      {b.rate / a.rate:5.2f}   target >= 0.60")
    print(f"  (b)/(a) CPU/msg    {b.cpu_per_message / a.cpu_per_message:5.2f}   target <= 2.00")
    print(f"  (b)/(a) CPU/msg incl. PostgreSQL "
          f"{(b.cpu_per_message + b.postgres_cpu_per_message) / a.cpu_per_message:5.2f}"
          "   (not a target: the database's share)")  # fmt: skip
    print(f"  (c)/(b) msg/s      {c.rate / b.rate:5.2f}   target >= 1.00")
    print(f"  (c)/(b) CPU/msg    {c.cpu_per_message / b.cpu_per_message:5.2f}   target <= 1.10")
    print(f"  (b0)/(a) msg/s     {nothing_stored.rate / a.rate:5.2f}   "
          "(not a target: (b) with a delivery function that stores nothing)")  # fmt: skip
    print(f"  25 MB message: {seconds:.2f} s, intake peak RSS {peak_kb / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
