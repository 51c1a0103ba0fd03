"""Helpers for the intake tests: certificates in the store, a running intake, an LMTP client
that reads every reply line itself, and decryption with the openssl command."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from encimap import config as config_module
from encimap.pgcluster import free_port
from encimap.store import certificates
from encimap.store.vaultboxes import Vaultbox
from tests.service_support import running_service
from tests.smime_support import openssl_decrypt_files, pem_key
from tests.support import Databases, make_config


def intake_config(databases: Databases, **intake: object) -> config_module.Config:
    settings = {"listen": f"127.0.0.1:{free_port()}", "hostname": "mx.test", **intake}
    return make_config(databases, intake=settings)


def port_of(cfg: config_module.Config) -> int:
    listen = cfg.intake.listen
    assert isinstance(listen, str)
    return int(listen.rpartition(":")[2])


async def add_certificate(
    databases: Databases, vaultbox: Vaultbox, directory: Path, *, address: str | None = None
) -> Path:
    """Give `vaultbox` a generated certificate (for `address`, default its own); returns the
    private key's PEM file, which only the test keeps."""
    conn = await databases.connect()
    try:
        cert_pem, key, info = await certificates.add_generated_certificate(
            conn, vaultbox_id=vaultbox.id, address=address or vaultbox.address
        )
    finally:
        await conn.close()
    key_path = directory / f"{vaultbox.alias}-{info.fingerprint_sha256[:8]}.key"
    key_path.write_bytes(pem_key(key))
    key_path.with_suffix(".crt").write_bytes(cert_pem)
    return key_path


def running_intake(
    cfg: config_module.Config,
) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
    """The intake served in this process until the block ends (then drained)."""
    return running_service(cfg, "intake", drain_timeout=5.0)


class LMTPClient:
    """A minimal LMTP client that returns every reply line, as the tests need them raw."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> LMTPClient:
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        greeting = await client.reply()
        assert greeting[0].startswith("220"), greeting
        return client

    async def reply(self) -> list[str]:
        """One (possibly multi-line) reply."""
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 30)).decode().rstrip("\r\n")
            if not line:
                raise ConnectionError("connection closed")
            lines.append(line)
            if line[3:4] != "-":
                return lines

    async def command(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        return (await self.reply())[-1]

    async def send_data(self, data: bytes, replies: int) -> list[str]:
        """DATA with `data` (dot-stuffed here), then read `replies` reply lines."""
        start = await self.command("DATA")
        assert start.startswith("354"), start
        self.writer.write(dot_stuff(data) + b".\r\n")
        return [(await self.reply())[-1] for _ in range(replies)]

    async def transaction(
        self, sender: str, recipients: list[str], data: bytes
    ) -> tuple[list[str], list[str]]:
        """(RCPT replies, DATA replies) of one mail transaction."""
        assert (await self.command(f"MAIL FROM:<{sender}>")).startswith("250")
        rcpt = [await self.command(f"RCPT TO:<{address}>") for address in recipients]
        accepted = sum(reply.startswith("250") for reply in rcpt)
        if not accepted:
            await self.command("RSET")
            return rcpt, []
        return rcpt, await self.send_data(data, accepted)

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await self.command("QUIT")
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def dot_stuff(data: bytes) -> bytes:
    lines = data.split(b"\r\n")
    stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return stuffed if stuffed.endswith(b"\r\n") else stuffed + b"\r\n"


def openssl_decrypt(stored: bytes, key_path: Path) -> bytes:
    """Decrypt a stored message with `openssl cms -decrypt` (an implementation not ours), with
    the key `add_certificate` wrote."""
    return openssl_decrypt_files(stored, key_path.with_suffix(".crt"), key_path, "-binary")


async def stored_messages(databases: Databases, vaultbox: Vaultbox) -> list[dict]:
    conn = await databases.connect()
    try:
        rows = await conn.fetch(
            "SELECT * FROM encrypted_emails WHERE vaultbox_id = $1 ORDER BY uid", vaultbox.id
        )
    finally:
        await conn.close()
    # The stored bytes under the name FETCH reads them by (encimap.store.messages.STORED_BYTES).
    return [{**row, "body_encrypted": row["body"]} for row in rows]
