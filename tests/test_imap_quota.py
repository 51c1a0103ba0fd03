"""QUOTA (RFC 9208) from the vaultbox's limits: usage over all mailboxes, SETQUOTA refused,
APPEND beyond a limit NO [OVERQUOTA] (as delivery is refused beyond it)."""

from __future__ import annotations

from tests.imap_support import (
    RawClient,
    encrypt_for,
    imap_config,
    make_box,
    plain_message,
    ports,
    running_imap,
    store,
)
from tests.support import set_limits


async def _append(client: RawClient, *bodies: bytes) -> bytes:
    command = b"p APPEND Sent"
    for body in bodies:
        command += f" {{{len(body)}+}}\r\n".encode() + body
    await client.send(command + b"\r\n")
    return (await client.until("p"))[-1]


async def test_quota_from_the_vaultbox_limits(databases, tls_files, tls_ca, tmp_path):
    box = await make_box(databases, "quota@example.test", tmp_path)
    open_box = await make_box(databases, "noquota@example.test", tmp_path)
    stored = encrypt_for(box, plain_message(1))
    await store(databases, box, stored)
    await store(databases, box, stored, mailbox="Trash")
    await set_limits(databases, box.id, {"max_messages": 3, "max_bytes": 1_048_576})
    cfg = imap_config(databases, tls_files)
    async with running_imap(cfg):
        client = await RawClient.connect(ports(cfg)[1], tls_ca)
        await client.login(box)
        assert b" QUOTA " in (await client.command("c", "CAPABILITY"))[0]
        kib = (2 * len(stored) + 1023) // 1024
        reply = await client.command("q", "GETQUOTAROOT INBOX")
        assert reply[:2] == [
            b'* QUOTAROOT INBOX ""\r\n',
            b'* QUOTA "" (STORAGE %d 1024 MESSAGE 2 3)\r\n' % kib,
        ], reply
        reply = await client.command("g", 'GETQUOTA ""')
        assert reply[0] == b'* QUOTA "" (STORAGE %d 1024 MESSAGE 2 3)\r\n' % kib, reply
        assert (await client.command("n", 'GETQUOTA "other"'))[-1].startswith(b"n NO")
        reply = await client.command("s", 'SETQUOTA "" (STORAGE 99999)')
        assert reply[-1].startswith(b"s NO [NOPERM]"), reply
        second = encrypt_for(box, plain_message(2))
        assert (await _append(client, second, second)).startswith(b"p NO [OVERQUOTA]")
        assert (await _append(client, second)).startswith(b"p OK [APPENDUID")
        assert (await _append(client, second)).startswith(b"p NO [OVERQUOTA]")
        await client.close()

        client = await RawClient.connect(ports(cfg)[1], tls_ca)
        await client.login(open_box)
        assert await client.command("q", "GETQUOTAROOT INBOX") == [
            b"* QUOTAROOT INBOX\r\n",
            b"q OK Getquotaroot completed.\r\n",
        ]
        assert (await client.command("g", 'GETQUOTA ""'))[-1].startswith(b"g NO")
        await client.close()
