"""IMAP benchmark: encimap against Dovecot 2.3 on the same 1,000 S/MIME messages (~10 KB).

    python -m bench.imap [--messages 1000] [--runs 5]
    python -m bench.imap --stress [--clients 10] [--seconds 60] [--workers 1] [--unix-socket]

`--stress` instead runs Dovecot's imaptest stress (`../shared/tools/imaptest`: random
concurrent sessions, every reply checked) against both servers in turn, on the same setup,
and prints each command type's average latency side by side with the error counts, the
commands each server completed per second (imaptest's clients send the next command as soon as
a reply arrives, so a faster server is given more work), how busy the machine's cores were and
how many of imaptest's clients were connected on average (the others were connecting: the
cheaper a server makes connecting and logging in, the more clients send commands at once).
`--workers` sets encimap's `imap.workers`; `--unix-socket` has encimap reach PostgreSQL through
its Unix socket (the choice when both run on one host) instead of TCP on loopback.

One run starts a private PostgreSQL cluster, stores the messages through the insert path,
serves them with `encimap serve imap` (a separate process, so its CPU can be measured) and with
a private Dovecot from a Maildir (tests/dovecot_support.py), then times each operation with
imaplib against both: medians of `--runs` after one warm-up. Both are plain IMAP on loopback
(encimap's `imap.trusted_networks` allows LOGIN there), so TLS is not part of the comparison.
Server CPU is user+system time of the server's processes during the operation (for encimap,
also of the PostgreSQL backends, which do the work Dovecot's index does in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import os
import random
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from encimap import smime
from encimap.auth.passwords import hash_password
from encimap.pgcluster import LocalCluster, free_port, prepare_databases
from encimap.store import certificates, credentials, messages, vaultboxes
from encimap.tls import write_self_signed
from tests import dovecot_support, imaptest_support

ADDRESS = "bench@example.test"
PASSWORD = "bench-password"
_TICK = os.sysconf("SC_CLK_TCK")
METADATA = "(b) UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)"


def message(number: int, size: int) -> bytes:
    body = "".join(
        f"Line {line} of message {number}: lorem ipsum dolor sit amet\r\n"
        for line in range(size // 48)
    )
    return (
        f"From: Sender {number} <sender{number}@example.org>\r\nTo: {ADDRESS}\r\n"
        f"Subject: Benchmark message {number}\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        f"Message-ID: <bench{number}@example.org>\r\n\r\n{body}"
    ).encode()


async def prepare(cluster: LocalCluster, count: int) -> tuple[str, list[bytes]]:
    """Migrated databases with one vaultbox holding `count` encrypted messages."""
    _, encimap_url = await prepare_databases(cluster, "motorical_db", "motorical_encrypted_imap")
    conn = await asyncpg.connect(encimap_url)
    try:
        box, username, cert_pem = await bench_mailbox(conn, ADDRESS)
        stored = [smime.encrypt_message(message(n, 7000), [cert_pem]).message for n in range(count)]
        for body in stored:
            await messages.insert_message(conn, vaultbox_id=box.id, body=body)
    finally:
        await conn.close()
    return username, stored


def cpu_of_tree(root: int) -> float:
    """CPU seconds (user+system) of `root` and all its descendants now alive, and of the
    descendants they have reaped (Dovecot's imap processes end with their connection)."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        times[pid] = sum(int(value) for value in fields[11:15]) / _TICK
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += times.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return total


class Target:
    def __init__(
        self,
        name: str,
        port: int,
        user: str,
        password: str,
        roots: list[int],
        metrics_port: int | None = None,
    ) -> None:
        self.name, self.port, self.user, self.password, self.roots = (
            name,
            port,
            user,
            password,
            roots,
        )
        self.metrics_port = metrics_port  # encimap's /metrics

    def cpu(self) -> float:
        return sum(cpu_of_tree(root) for root in self.roots)

    def session(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.port)
        client.login(self.user, self.password)
        client.select("INBOX")
        return client


def operations(count: int) -> dict[str, Callable[[Target, imaplib.IMAP4 | None], object]]:
    rng = random.Random(7)
    picks = [rng.randint(1, count) for _ in range(200)]

    def connect_login_select(target: Target, _client: object) -> imaplib.IMAP4:
        return target.session()

    def fetch_metadata(_target: Target, client: imaplib.IMAP4) -> None:
        typ, data = client.uid(
            "FETCH", "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)"
        )
        assert typ == "OK" and len(data) >= count, (typ, len(data))

    def fetch_bodies(_target: Target, client: imaplib.IMAP4) -> None:
        typ, data = client.fetch("1:*", "BODY.PEEK[]")
        assert typ == "OK" and sum(isinstance(d, tuple) for d in data) == count

    def fetch_singles(_target: Target, client: imaplib.IMAP4) -> None:
        for uid in picks:
            typ, data = client.uid("FETCH", str(uid), "BODY.PEEK[]")
            assert typ == "OK" and isinstance(data[0], tuple)

    def store_add_remove(_target: Target, client: imaplib.IMAP4) -> None:
        # both directions in one operation, so every run changes every message
        typ, data = client.store("1:*", "+FLAGS", "(\\Seen)")
        assert typ == "OK" and len(data) == count, (typ, len(data))
        typ, data = client.store("1:*", "-FLAGS", "(\\Seen)")
        assert typ == "OK" and len(data) == count, (typ, len(data))

    return {
        "(a) connect + LOGIN + SELECT": connect_login_select,
        METADATA: fetch_metadata,
        "(c) FETCH 1:* BODY.PEEK[]": fetch_bodies,
        "(d) 200 x UID FETCH n BODY.PEEK[]": fetch_singles,
        "(e) STORE 1:* +FLAGS (\\Seen), then -FLAGS": store_add_remove,
    }


def measure(target: Target, runs: int, count: int) -> dict[str, tuple[float, float]]:
    """{operation: (median wall ms, median server CPU ms)}."""
    results = {}
    client = target.session()
    for name, operation in operations(count).items():
        walls, cpus = [], []
        for attempt in range(runs + 1):  # the first is the warm-up
            cpu_before = target.cpu()
            started = time.perf_counter()
            opened = operation(target, client)
            wall = time.perf_counter() - started
            cpu = target.cpu() - cpu_before  # before LOGOUT: Dovecot's imap process still lives
            if isinstance(opened, imaplib.IMAP4):
                opened.logout()
            if attempt:
                walls.append(wall * 1000)
                cpus.append(cpu * 1000)
        results[name] = (statistics.median(walls), statistics.median(cpus))
    client.logout()
    return results


@dataclass
class Stressed:
    """One imaptest stress run: ms per command by type, error count, commands per second,
    share of the machine's cores busy (all processes, imaptest's included)."""

    latencies: dict[str, float]
    errors: int
    rate: float
    busy: float
    connected: float  # imaptest's clients connected, on average
    server_ms: dict[str, float]  # encimap's own time per command (encimap_imap_command_seconds)
    server_cpu: float  # CPU seconds of the server (encimap: with PostgreSQL) during the run
    client_cpu: float  # CPU seconds of imaptest


def command_seconds(metrics_port: int | None) -> dict[str, tuple[float, float]]:
    """encimap_imap_command_seconds from /metrics: {command: (seconds, count)}."""
    if metrics_port is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found: dict[str, list[float]] = {}
    for match in re.finditer(
        r'^encimap_imap_command_seconds_(sum|count)\{command="(\w+)"\} (\S+)$', text, re.M
    ):
        found.setdefault(match[2], [0.0, 0.0])[match[1] == "count"] = float(match[3])
    return {command: (total, count) for command, (total, count) in found.items()}


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (/proc/stat)."""
    fields = [float(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def stress(target: Target, clients: int, seconds: int) -> Stressed:
    """imaptest's stress run against `target`."""
    busy_before, total_before = machine_busy()
    timed_before = command_seconds(target.metrics_port)
    server_before, client_before = target.cpu(), children_cpu()
    output = subprocess.run(
        imaptest_support.stress_command(
            target.port, target.user, target.password, f"clients={clients}", f"secs={seconds}"
        ),
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    ).stdout
    busy_after, total_after = machine_busy()
    server_cpu, client_cpu = target.cpu() - server_before, children_cpu() - client_before
    server_ms = {}
    for command, (total, count) in command_seconds(target.metrics_port).items():
        total_then, count_then = timed_before.get(command, (0.0, 0.0))
        if count > count_then:
            server_ms[command] = (total - total_then) / (count - count_then) * 1000
    return Stressed(
        imaptest_support.latencies(output),
        len(imaptest_support.errors(output)),
        sum(imaptest_support.totals(output).values()) / seconds,
        (busy_after - busy_before) / (total_after - total_before),
        imaptest_support.connected(output),
        server_ms,
        server_cpu,
        client_cpu,
    )


def children_cpu() -> float:
    """CPU seconds of this process's ended children (imaptest's runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def print_stress(results: dict[str, Stressed], args: argparse.Namespace) -> None:
    database = "Unix socket" if args.unix_socket else "TCP"
    print(
        f"\nimaptest stress, {args.clients} clients, {args.seconds} s, encimap with"
        f" {args.workers} worker(s), PostgreSQL over {database}; ms per command"
    )
    theirs, ours = results["Dovecot"], results["encimap"]
    print(f"{'command':<10} {'Dovecot':>8} {'encimap':>8} {'ratio':>6}")
    for name, value in theirs.latencies.items():
        mine = ours.latencies.get(name, float("nan"))
        ratio = f"{mine / value:>5.1f}x" if value else "     -"
        print(f"{name:<10} {value:>8.0f} {mine:>8.0f} {ratio}")
    print(f"{'errors':<10} {theirs.errors:>8} {ours.errors:>8}")
    print(
        f"{'commands/s':<10} {theirs.rate:>8.0f} {ours.rate:>8.0f} {ours.rate / theirs.rate:>5.2f}x"
    )
    print(f"{'cores busy':<10} {theirs.busy:>8.0%} {ours.busy:>8.0%}")
    print(f"{'connected':<10} {theirs.connected:>8.1f} {ours.connected:>8.1f}")
    cores = os.cpu_count() or 1
    per_command = [run.busy * cores * 1000 / run.rate for run in (theirs, ours)]
    print(f"{'CPU ms/cmd':<10} {per_command[0]:>8.2f} {per_command[1]:>8.2f}  (machine-wide)")
    for label, share in (("server", "server_cpu"), ("imaptest", "client_cpu")):
        mine = [getattr(run, share) * 1000 / (run.rate * args.seconds) for run in (theirs, ours)]
        print(f"{'  ' + label:<10} {mine[0]:>8.2f} {mine[1]:>8.2f}")
    whose = " (the first process's sessions)" if args.workers > 1 else ""
    print(f"\nencimap's own time per command{whose}, first line to tagged reply; ms")
    for command, value in sorted(ours.server_ms.items()):
        print(f"{command:<10} {value:>8.1f}")


async def bench_mailbox(
    conn: asyncpg.Connection, address: str
) -> tuple[vaultboxes.Vaultbox, str, bytes]:
    """A vaultbox at `address` with an IMAP login (PASSWORD) and a generated certificate:
    (vaultbox, username, certificate PEM)."""
    alias, _, domain = address.partition("@")
    box = await vaultboxes.create_vaultbox(
        conn, user_id=uuid.uuid4(), alias=alias, domain=domain, name=None
    )
    username = credentials.new_username(domain)
    await credentials.create_credential(
        conn,
        kind="imap",
        vaultbox_id=box.id,
        username=username,
        password_hash=hash_password(PASSWORD, 10),
    )
    pem, _key, _info = await certificates.add_generated_certificate(
        conn, vaultbox_id=box.id, address=address
    )
    return box, username, pem


def serve_imap(
    base: Path,
    cluster: LocalCluster,
    port: int,
    limits: str,
    metrics: str = "",
    unix_socket: bool = False,
) -> subprocess.Popen:
    """`encimap serve imap` on the cluster's databases (over TCP, or its Unix socket): plain
    IMAP on `port` from loopback (a trusted network: LOGIN allowed), with `limits` (TOML lines)
    under `[imap]`, and /metrics on `metrics` ("" none)."""
    cert, key = write_self_signed(base / "tls")
    url = cluster.socket_url if unix_socket else cluster.url
    return serve(
        base / "encimap.toml",
        "imap",
        port,
        f'[database]\nmotorical_url = "{url("motorical_db")}"\n'
        f'encimap_url = "{url("motorical_encrypted_imap")}"\n'
        f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        f'[imap]\nlisten = "127.0.0.1:{port}"\ntls_listen = []\n'
        f'trusted_networks = ["127.0.0.0/8"]\n{limits}'
        f'[metrics]\nimap = "{metrics}"\n[log]\nlevel = "warning"\n',
    )


def serve(config: Path, service: str, port: int, settings: str) -> subprocess.Popen:
    """`encimap serve <service>` with `settings` as its configuration, once it listens."""
    config.write_text(settings)
    server = subprocess.Popen(
        [sys.executable, "-m", "encimap", "--config", str(config), "serve", service],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    wait_for_port(port)
    return server


def stop(server: subprocess.Popen) -> None:
    """The server gone: asked to stop, killed if it has not within 10 s (it waits for the
    sessions still open when asked)."""
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(10)


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stress", action="store_true", help="imaptest's stress run instead")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--workers", type=int, default=1, help="encimap's imap.workers")
    parser.add_argument(
        "--unix-socket",
        action="store_true",
        help="encimap reaches PostgreSQL through its Unix socket instead of TCP on loopback",
    )
    args = parser.parse_args()
    if reason := dovecot_support.available():
        print(f"cannot run the Dovecot baseline: {reason}", file=sys.stderr)
        return 1
    if args.stress and (reason := imaptest_support.available()):
        print(f"cannot run the stress mode: {reason}", file=sys.stderr)
        return 1
    base = Path(tempfile.mkdtemp(prefix="encimap-bench-"))
    cluster = LocalCluster(base / "pg")
    cluster.start()
    server = dovecot = None
    try:
        username, stored = asyncio.run(prepare(cluster, args.messages))
        sizes = [len(body) for body in stored]
        print(f"{len(stored)} S/MIME messages, median {statistics.median(sizes) / 1024:.1f} KB")
        port, metrics_port = free_port(), free_port()
        server = serve_imap(
            base,
            cluster,
            port,
            f"max_connections_per_user = 100\nworkers = {args.workers}\n",
            f"127.0.0.1:{metrics_port}",
            args.unix_socket,
        )
        dovecot = dovecot_support.Dovecot(stored)
        dovecot.start()
        master = int((dovecot.base / "run" / "master.pid").read_text())
        postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
        targets = [
            Target("Dovecot", dovecot.port, dovecot.user, dovecot.password, [master]),
            Target("encimap", port, username, PASSWORD, [server.pid, postmaster], metrics_port),
        ]
        if args.stress:
            stressed = {t.name: stress(t, args.clients, args.seconds) for t in targets}
        else:
            results = {target.name: measure(target, args.runs, len(stored)) for target in targets}
    finally:
        if server is not None:
            stop(server)
        if dovecot is not None:
            dovecot.stop()
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    if args.stress:
        print_stress(stressed, args)
        return 0
    print(f"\nmedians of {args.runs} after a warm-up; wall ms (server CPU ms)")
    print(f"{'operation':<84} {'Dovecot':>16} {'encimap':>16} {'ratio':>6}")
    for name in results["Dovecot"]:
        theirs, ours = results["Dovecot"][name], results["encimap"][name]
        print(
            f"{name:<84} {theirs[0]:>7.1f} ({theirs[1]:>5.0f}) {ours[0]:>7.1f} ({ours[1]:>5.0f})"
            f" {ours[0] / theirs[0]:>5.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
