"""Authenticated submissions of 10 KB messages over 4 connections (one login each) through
`encimap serve submission` to a sink, against the same client sending straight to the sink.

    python -m bench.submission [--messages 400]

A private PostgreSQL cluster is started for the run (as the tests do). The client is smtplib
in 4 threads; the sink is an aiosmtpd Controller in a thread of this process; the submission
service runs as `encimap serve submission` in its own process, as in production. Prints
messages/s for both and their ratio (target >= 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
import trustme

from encimap import db, logs
from encimap.pgcluster import LocalCluster
from tests.submission_helpers import free_port, message, sink
from tests.support import REPO, Databases, make_motorblock, write_config_file

CONNECTIONS = 4
USER, PASSWORD, DOMAIN = "bench-mb", "bench-password", "bench.test"
SENDER = f"bench@{DOMAIN}"


def payload() -> bytes:
    body = ("x" * 76 + "\r\n") * 128  # ~10 KB
    return message(SENDER, ["rcpt@dest.test"], subject="bench", body=body)


def run_clients(port: int, per_connection: int, connect) -> float:
    """Send per_connection messages on each of CONNECTIONS connections; returns seconds."""
    data = payload()
    barrier = threading.Barrier(CONNECTIONS + 1)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            client = connect(port)
            barrier.wait()
            for _ in range(per_connection):
                client.sendmail(SENDER, ["rcpt@dest.test"], data)
            client.quit()
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


@contextlib.contextmanager
def serving(config_file: Path, port: int):
    """`encimap serve submission` in its own process, as in production (its own core/GIL)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "encimap", "--config", str(config_file), "serve", "submission"]
    process = subprocess.Popen(command, env=env)
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
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=40)


async def main(total: int) -> None:
    logs.configure("warning", "console")
    base = Path(tempfile.mkdtemp(prefix="encimap-bench-"))
    cluster = LocalCluster(base / "data")
    cluster.start()
    try:
        for name in ("motorical_bench", "encimap_bench"):
            cluster.create_database(name)
        databases = Databases(cluster, cluster.url("motorical_bench"), cluster.url("encimap_bench"))
        for component, url in zip(
            db.DATABASES, (databases.motorical_url, databases.encimap_url), strict=True
        ):
            conn = await asyncpg.connect(url)
            try:
                await db.migrate(conn, component)
            finally:
                await conn.close()
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
        with sink() as (controller, handler):
            baseline = await asyncio.to_thread(run_clients, controller.port, per_connection, direct)
            port = free_port()
            config_file = write_config_file(
                base / "encimap.toml",
                databases,
                f'[tls]\ncert = "{chain}"\nkey = "{key}"\n'
                f'[submission]\nlisten = "127.0.0.1:{port}"\n'
                f'relay = "127.0.0.1:{controller.port}"\n[log]\nlevel = "warning"\n',
            )
            with serving(config_file, port):
                through = await asyncio.to_thread(run_clients, port, per_connection, authenticated)
            assert len(handler.messages) == 2 * sent
        direct_rate, submission_rate = sent / baseline, sent / through
        print(f"messages: {sent} x {len(payload())} bytes over {CONNECTIONS} connections")
        print(f"direct to sink:            {direct_rate:8.1f} msg/s")
        print(f"through submission (TLS):  {submission_rate:8.1f} msg/s")
        print(f"ratio submission / direct: {submission_rate / direct_rate:8.2f}  (target >= 0.5)")
    finally:
        cluster.stop("immediate")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400)
    asyncio.run(main(parser.parse_args().messages))
