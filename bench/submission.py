"""Authenticated submissions of 10 KB messages over 4 connections (one login each) through
`encimap serve submission` to a sink, against the same client sending straight to the sink.

    python -m bench.submission [--messages 2000] [--rounds 5] [--event-loop uvloop]

A private PostgreSQL cluster is started for the run (as the tests do). The client is smtplib
in 4 threads; the sink is an aiosmtpd Controller in a thread of this process; the submission
service runs as `encimap serve submission` in its own process, as in production. Prints
messages/s for both and their ratio (target >= 0.5), and the CPU milliseconds per message each
party spent (client threads, sink thread, submission process, PostgreSQL backends), read from
/proc: on a 2-core machine where all of them share the cores, that shows where the time goes.
The sink and the submission service run on the same event loop implementation (--event-loop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from encimap import logs
from encimap.pgcluster import LocalCluster, free_port, prepare_databases
from encimap.service import eventloop
from tests.submission_helpers import message, sink
from tests.support import REPO, Databases, make_motorblock, write_config_file

CONNECTIONS = 4
USER, PASSWORD, DOMAIN = "bench-mb", "bench-password", "bench.test"
SENDER = f"bench@{DOMAIN}"


def payload() -> bytes:
    body = ("x" * 76 + "\r\n") * 128  # ~10 KB
    return message(SENDER, ["rcpt@dest.test"], subject="bench", body=body)


def cpu_seconds(stat_path: str) -> float:
    """User + system CPU of a process or thread from its /proc stat file (0 once it is gone)."""
    try:
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu(cluster: LocalCluster) -> float:
    """CPU of the postmaster and all its children (the backends serving the run)."""
    postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(f"/proc/{postmaster}/stat")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if ppid == postmaster:
            total += cpu_seconds(str(stat))
    return total


@dataclass
class Run:
    """One measured run: wall seconds and CPU seconds per party."""

    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)


class CpuMeter:
    """CPU used by named parties between start() and stop() (stat paths or callables)."""

    def __init__(self, sources: dict[str, Callable[[], float]]) -> None:
        self.sources = sources
        self.started: dict[str, float] = {}

    def start(self) -> None:
        self.started = {name: read() for name, read in self.sources.items()}

    def stop(self) -> dict[str, float]:
        return {name: read() - self.started[name] for name, read in self.sources.items()}


def run_clients(port: int, per_connection: int, connect, meter: CpuMeter) -> Run:
    """Send per_connection messages on each of CONNECTIONS connections."""
    data = payload()
    barrier = threading.Barrier(CONNECTIONS + 1)
    errors: list[BaseException] = []
    client_cpu: list[float] = []

    def worker() -> None:
        try:
            client = connect(port)
            barrier.wait()
            cpu_started = time.thread_time()
            for _ in range(per_connection):
                client.sendmail(SENDER, ["rcpt@dest.test"], data)
            client.quit()
            client_cpu.append(time.thread_time() - cpu_started)
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    meter.start()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return Run(seconds, {"client": sum(client_cpu), **meter.stop()})


@contextlib.contextmanager
def serving(config_file: Path, port: int) -> Iterator[int]:
    """`encimap serve submission` in its own process, as in production (its own core/GIL)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "encimap", "--config", str(config_file), "serve", "submission"]
    # Logs at info as in production (one JSON line per message), rendered and thrown away.
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("submission service did not start") from None
                time.sleep(0.1)
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=40)


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda run: run.seconds)[len(runs) // 2]


def report(sent: int, rounds: list[tuple[Run, Run]]) -> None:
    """Medians over the rounds (the machine is shared: single runs vary by +-20 %)."""
    baseline = median_run([direct for direct, _ in rounds])
    through = median_run([through for _, through in rounds])
    direct_rate, submission_rate = sent / baseline.seconds, sent / through.seconds
    ratios = sorted((d.seconds / t.seconds for d, t in rounds))
    print(f"messages: {sent} x {len(payload())} bytes over {CONNECTIONS} connections, ", end="")
    print(f"{len(rounds)} rounds (medians)")
    print(f"direct to sink:            {direct_rate:8.1f} msg/s")
    print(f"through submission (TLS):  {submission_rate:8.1f} msg/s")
    print(f"ratio submission / direct: {submission_rate / direct_rate:8.2f}  (target >= 0.5)")
    print("ratio per round:           " + " ".join(f"{ratio:.2f}" for ratio in ratios))
    print("CPU ms per message      direct  through")
    for party in ("client", "sink", "submission", "postgres"):
        before, after = baseline.cpu.get(party), through.cpu.get(party, 0.0)
        shown = f"{before / sent * 1000:6.2f}" if before is not None else "     -"
        print(f"  {party:<20} {shown}   {after / sent * 1000:6.2f}")
    for name, run in (("direct", baseline), ("through", through)):
        busy = sum(run.cpu.values()) / run.seconds
        print(f"  {name}: {busy:.2f} of 2 cores busy on these parties")


async def main(total: int, repeat: int, event_loop: str) -> None:
    logs.configure("warning", "console")
    base = Path(tempfile.mkdtemp(prefix="encimap-bench-"))
    cluster = LocalCluster(base / "data")
    cluster.start()
    try:
        urls = await prepare_databases(cluster, "motorical_bench", "encimap_bench")
        databases = Databases(cluster, *urls)
        await make_motorblock(
            databases, username=USER, password=PASSWORD, domain=DOMAIN, rate_limit=10**9
        )
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        chain, key = base / "chain.pem", base / "key.pem"
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)

        def direct(port: int) -> smtplib.SMTP:
            return smtplib.SMTP("127.0.0.1", port, timeout=30)

        def authenticated(port: int) -> smtplib.SMTP:
            client = smtplib.SMTP("127.0.0.1", port, timeout=30)
            client.starttls(context=client_tls)
            client.login(USER, PASSWORD)
            return client

        per_connection = max(1, total // CONNECTIONS)
        sent = per_connection * CONNECTIONS
        # The sink (the direct baseline) runs on the loop the submission service runs on.
        factory = eventloop.loop_factory(event_loop)
        with sink(**({"loop": factory()} if factory else {})) as (controller, handler):
            print(f"event loop: {eventloop.implementation(controller.loop)} (sink and submission)")
            sink_stat = f"/proc/self/task/{controller._thread.native_id}/stat"
            sources = {
                "sink": lambda: cpu_seconds(sink_stat),
                "postgres": lambda: postgres_cpu(cluster),
            }
            port = free_port()
            config_file = write_config_file(
                base / "encimap.toml",
                databases,
                f'[tls]\ncert = "{chain}"\nkey = "{key}"\n'
                f'[submission]\nlisten = "127.0.0.1:{port}"\n'
                f'relay = "127.0.0.1:{controller.port}"\n[log]\nlevel = "info"\n'
                f'[service]\nevent_loop = "{event_loop}"\n',
            )
            rounds = []
            with serving(config_file, port) as pid:
                for _ in range(repeat):
                    baseline = await asyncio.to_thread(
                        run_clients, controller.port, per_connection, direct, CpuMeter(sources)
                    )
                    sources["submission"] = lambda: cpu_seconds(f"/proc/{pid}/stat")
                    through = await asyncio.to_thread(
                        run_clients, port, per_connection, authenticated, CpuMeter(sources)
                    )
                    del sources["submission"]
                    rounds.append((baseline, through))
            assert len(handler.messages) == 2 * sent * repeat
        report(sent, rounds)
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="per run")
    parser.add_argument("--rounds", type=int, default=5, help="direct and through, alternating")
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.messages, arguments.rounds, arguments.event_loop))
