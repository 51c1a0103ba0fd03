"""The services on PostgreSQL's Unix socket (`?host=/directory` URLs, the choice when the
database runs on the mail host): pools and the LISTEN connection both work through it."""

from __future__ import annotations

import dataclasses

from tests.imap_support import (
    imap_config,
    make_box,
    plain_message,
    ports,
    running_imap,
    selected_session,
)
from tests.support import Databases


def through_socket(databases: Databases, url: str) -> str:
    """`url` (TCP on loopback) as the same database through the cluster's Unix socket."""
    name = url.rpartition("/")[2]
    return databases.cluster.socket_url(name)


async def test_imap_reads_writes_and_hears_changes_through_the_socket(
    databases, tls_files, tls_ca, tmp_path
):
    box = await make_box(databases, "socket@example.test", tmp_path)
    cfg = imap_config(databases, tls_files)
    cfg = dataclasses.replace(
        cfg,
        database=dataclasses.replace(
            cfg.database,
            motorical_url=through_socket(databases, databases.motorical_url),
            encimap_url=through_socket(databases, databases.encimap_url),
        ),
    )
    assert "?host=/" in cfg.database.encimap_url
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        watcher = await selected_session(tls_port, tls_ca, box)
        writer = await selected_session(tls_port, tls_ca, box)
        message = plain_message(1)
        await writer.send(b"a APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
        assert (await writer.until("a"))[-1].startswith(b"a OK")
        assert b"* 1 EXISTS\r\n" in await watcher.command("n", "NOOP")
        for client in (watcher, writer):
            await client.close()
