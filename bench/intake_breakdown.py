"""Where the intake's CPU per message goes, under the same load as bench.intake (b).

    python -m bench.intake_breakdown [--messages 2000] [--sessions 4] [--size 10240]

Serves the intake (1 worker) in this process, loads it with smtp-source, and times the
synchronous steps of a delivery with time.process_time() around them (encryption, the IMAP
metadata, the trace fields, the log line and metric, the certificate cache). What is left is
the protocol (aiosmtpd), the event loop and the PostgreSQL driver, which interleave and cannot
be timed apart this way; bench.intake's (a) gives the protocol's share alone. PostgreSQL's CPU
(all cluster processes) is shown beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import intake as bench
from encimap import config as config_module
from encimap import logs, mimeinfo, service, smime
from encimap.delivery import deliverer as delivery
from encimap.delivery import recipients, trace
from encimap.intake import handler
from encimap.pgcluster import LocalCluster, free_port
from encimap.service import eventloop
from encimap.store import messages

spent: collections.Counter[str] = collections.Counter()


def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.process_time() - started

    return wrapper


def instrument() -> None:
    smime.encrypt_message = timed("S/MIME encryption", smime.encrypt_message)
    mimeinfo.describe = timed("IMAP metadata (mimeinfo)", mimeinfo.describe)
    messages.info_columns = timed("IMAP metadata as JSON", messages.info_columns)
    trace.prepare = timed("trace fields + body hash", trace.prepare)
    delivery.report = handler.report = timed("log line + metric", delivery.report)
    recipients.CertificateCache.usable = timed(
        "certificate cache", recipients.CertificateCache.usable
    )


async def measure(cluster: LocalCluster, config_path: Path, args: argparse.Namespace) -> None:
    cfg = config_module.load(config_path)
    port = int(str(cfg.intake.listen).rpartition(":")[2])
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        service.run(cfg, "intake", ready=ready, stop=stop, configure_logs=False)
    )
    try:
        await asyncio.wait_for(ready.wait(), 30)
        await asyncio.sleep(1)
        postgres = bench.PostgresCPU(cluster)
        postgres.start()
        spent.clear()
        started = time.process_time()
        seconds, _client_ms = await asyncio.to_thread(bench.load, port, args)
        total = time.process_time() - started
        postgres_ms = postgres.used()  # before the pool closes: its backends' CPU goes with them
    finally:
        stop.set()
        await task
    count = args.messages
    print(f"{count / seconds:.0f} msg/s; intake process {total * 1000 / count:.3f} CPU ms/msg, "
          f"PostgreSQL {postgres_ms / count:.3f}")  # fmt: skip
    for name, seconds_spent in spent.most_common():
        print(f"  {name:28} {seconds_spent * 1000 / count:.3f}")
    rest = (total - sum(spent.values())) * 1000 / count
    print(f"  {'protocol, loop, DB driver':28} {rest:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--size", type=int, default=10240)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="encimap-bench-"))
    cluster = LocalCluster(base / "pg")
    cluster.start()
    try:
        urls = asyncio.run(bench.prepare(cluster))
        config_path = bench.config_file(base, urls, free_port(), 1, "uvloop")
        with open("/dev/null", "w") as sink:
            logs.configure("info", "json", stream=sink)  # the delivery line is part of the cost
            instrument()
            eventloop.run(measure(cluster, config_path, args), "uvloop")  # as `encimap serve`
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
