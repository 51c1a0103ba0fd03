"""Helpers for the IMAP tests: a running IMAP service, vaultboxes with a certificate and
encrypted mail stored through the one insert path, and stdlib clients over real TLS."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import trustme

from encimap import config as config_module
from encimap import smime
from encimap.imap.commands import thread
from encimap.imap.commands.sort import MessageFields
from encimap.pgcluster import free_port
from encimap.store import messages
from tests import dovecot_support
from tests.intake_support import add_certificate
from tests.service_support import running_service
from tests.support import Databases, DemoVaultbox, make_config, make_vaultbox


def imap_config(
    databases: Databases, tls_files: tuple[Path, Path], **imap: object
) -> config_module.Config:
    settings = {
        "listen": f"127.0.0.1:{free_port()}",
        "tls_listen": f"127.0.0.1:{free_port()}",
        **imap,
    }
    return make_config(databases, tls_files, imap=settings)


def ports(cfg: config_module.Config) -> tuple[int, int]:
    """(STARTTLS port, implicit TLS port)."""
    return tuple(
        int(str(spec).rpartition(":")[2]) for spec in (cfg.imap.listen, cfg.imap.tls_listen)
    )  # type: ignore[return-value]


def running_imap(
    cfg: config_module.Config,
) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
    """The IMAP service in this process until the block ends (then drained)."""
    return running_service(cfg, "imap", drain_timeout=2.0)


@dataclass
class Box:
    """A vaultbox with an IMAP login and a certificate whose private key only the test has."""

    demo: DemoVaultbox
    key_path: Path
    certificate: bytes

    @property
    def id(self):
        return self.demo.vaultbox.id

    @property
    def username(self) -> str:
        return self.demo.username

    @property
    def password(self) -> str:
        return self.demo.password


async def make_box(databases: Databases, address: str, directory: Path, **kwargs: object) -> Box:
    demo = await make_vaultbox(databases, address, **kwargs)  # type: ignore[arg-type]
    key_path = await add_certificate(databases, demo.vaultbox, directory)
    return Box(demo, key_path, key_path.with_suffix(".crt").read_bytes())


def plain_message(number: int, *, size: int = 200) -> bytes:
    filler = f"line of text {number}\r\n" * max(1, size // 20)
    return (
        f"From: Sender {number} <sender{number}@example.org>\r\n"
        f"To: vault@example.test\r\n"
        f"Subject: message {number}\r\n"
        f"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        f"Message-ID: <m{number}@example.org>\r\n"
        f"\r\n{filler}"
    ).encode()


def encrypt_for(box: Box, plaintext: bytes) -> bytes:
    return smime.encrypt_message(plaintext, [box.certificate]).message


async def store(
    databases: Databases, box: Box, body: bytes, *, mailbox: str = "INBOX", flags: tuple = ()
) -> messages.Inserted:
    """Store `body` as delivered (the insert path intake and APPEND use)."""
    conn = await databases.connect()
    try:
        return await messages.insert_message(
            conn, vaultbox_id=box.id, body=body, mailbox_name=mailbox, flags=flags
        )
    finally:
        await conn.close()


async def store_mail(databases: Databases, box: Box, count: int) -> list[bytes]:
    """`plain_message(0..count-1)` encrypted to the box and stored in its INBOX, in order."""
    bodies = [encrypt_for(box, plain_message(number)) for number in range(count)]
    conn = await databases.connect()
    try:
        for body in bodies:
            await messages.insert_message(conn, vaultbox_id=box.id, body=body)
    finally:
        await conn.close()
    return bodies


def thread_items(headers: Sequence[bytes]) -> list[thread._Message]:
    """THREAD's input for a mailbox of messages with these outer headers (numbered from 1, all
    arrived at one time), to call `thread.references` without a server."""
    arrived = datetime(2024, 1, 2, tzinfo=UTC)
    return [
        thread._Message(
            seq, seq, MessageFields({"header": h, "internal_date": arrived, "size_bytes": 1})
        )
        for seq, h in enumerate(headers, 1)
    ]


def unfolded_header(message: bytes, newline: bytes = b"\r\n") -> bytes:
    """`message` with its header fields unfolded: clients that write a message back out
    (getmail, mutt) fold the stored 84-character Content-Type line of an S/MIME message."""
    header, _, body = message.partition(newline * 2)
    return re.sub(newline + rb"[ \t]+", b" ", header) + newline * 2 + body


def client_context(tls_ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    return context


def starttls_client(port: int, tls_ca: trustme.CA) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    client.starttls(client_context(tls_ca))
    return client


def login(port: int, tls_ca: trustme.CA, account: Box | DemoVaultbox) -> imaplib.IMAP4:
    """imaplib logged in over STARTTLS with the account's IMAP credential."""
    client = starttls_client(port, tls_ca)
    client.login(account.username, account.password)
    return client


# The longest response line fetch_from_both reads (BODYSTRUCTURE of a message with 10,000
# parts is about 1 MB on one line). Not the default: a reader buffers up to twice its limit,
# which the memory-measuring tests would count.
LONG_LINES = 16 << 20


class RawClient:
    """Speaks IMAP bytes directly (implicit TLS), for malformed input and exact responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting = b""

    @classmethod
    async def connect(
        cls, port: int, tls_ca: trustme.CA | None = None, *, limit: int = 1 << 16
    ) -> RawClient:
        context = client_context(tls_ca) if tls_ca else None
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=context,
            server_hostname="localhost" if context else None,
            limit=limit,
        )
        client = cls(reader, writer)
        client.greeting = await asyncio.wait_for(reader.readline(), 10)
        return client

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), 10)

    async def command(self, tag: str, text: bytes | str) -> list[bytes]:
        """Send `tag text`, return every line up to and including the tagged one."""
        if isinstance(text, str):
            text = text.encode()
        await self.send(tag.encode() + b" " + text + b"\r\n")
        return await self.until(tag)

    async def until(self, tag: str) -> list[bytes]:
        lines = []
        while True:
            line = await self.line()
            if not line:
                raise ConnectionError(f"closed; got {lines!r}")
            lines.append(line)
            literal = line.rstrip(b"\r\n")
            if literal.endswith(b"}") and b"{" in literal:
                size = int(literal[literal.rindex(b"{") + 1 : -1].rstrip(b"+"))
                lines.append(await asyncio.wait_for(self.reader.readexactly(size), 10))
                continue
            if line.startswith(tag.encode() + b" "):
                return lines

    async def login(self, box: Box) -> None:
        reply = await self.command("L", f'LOGIN "{box.username}" "{box.password}"')
        assert reply[-1].startswith(b"L OK"), reply

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            await self.writer.wait_closed()


async def selected_session(
    port: int, tls_ca: trustme.CA, box: Box, mailbox: str = "INBOX"
) -> RawClient:
    """A RawClient logged in as `box` with `mailbox` selected."""
    client = await RawClient.connect(port, tls_ca)
    await client.login(box)
    await client.command("s", f"SELECT {mailbox}")
    return client


async def fetch_items(
    client: RawClient, count: int, items: Sequence[str]
) -> dict[tuple[int, str], bytes]:
    """`FETCH seq (item)` for each message and item, one command each: the raw answers."""
    found = {}
    for seq in range(1, count + 1):
        for item in items:
            reply = await client.command("f", f"FETCH {seq} ({item})")
            assert reply[-1].startswith(b"f OK"), reply
            found[(seq, item)] = b"".join(reply[:-1])
    return found


async def fetch_from_both(
    databases: Databases,
    tls_files: tuple[Path, Path],
    tls_ca: trustme.CA,
    box: Box | DemoVaultbox,
    stored: list[bytes],
    items: Sequence[str],
) -> tuple[dict[tuple[int, str], bytes], dict[tuple[int, str], bytes]]:
    """The same FETCH items from Dovecot holding `stored` and from encimap, where `box`
    holds the same messages in the same order, each after EXAMINE INBOX: (theirs, ours)."""
    dovecot = dovecot_support.Dovecot(stored)
    await asyncio.to_thread(dovecot.start)
    try:
        client = await RawClient.connect(dovecot.port, limit=LONG_LINES)
        await client.command("l", f"LOGIN {dovecot.user} {dovecot.password}")
        await client.command("s", "EXAMINE INBOX")
        theirs = await fetch_items(client, len(stored), items)
        await client.close()
    finally:
        await asyncio.to_thread(dovecot.stop)
    cfg = imap_config(databases, tls_files)
    async with running_imap(cfg):
        client = await RawClient.connect(ports(cfg)[1], tls_ca, limit=LONG_LINES)
        await client.login(box)
        await client.command("s", "EXAMINE INBOX")
        ours = await fetch_items(client, len(stored), items)
        await client.close()
    return theirs, ours


async def read_fetch_streaming(raw: RawClient, tag: str, expected: bytes) -> tuple[int, int]:
    """Read a FETCH response without keeping it: (literals seen, bytes received). Every
    literal must equal `expected`."""
    literals = received = 0
    while True:
        line = await raw.line()
        assert line, "connection closed"
        received += len(line)
        if line.startswith(tag.encode() + b" "):
            assert line.startswith(tag.encode() + b" OK"), line
            return literals, received
        while line.rstrip(b"\r\n").endswith(b"}"):
            text = line.rstrip(b"\r\n")
            size = int(text[text.rindex(b"{") + 1 : -1])
            assert size == len(expected)
            offset = 0
            while offset < size:
                chunk = await asyncio.wait_for(raw.reader.read(min(65536, size - offset)), 10)
                assert chunk and chunk == expected[offset : offset + len(chunk)]
                offset += len(chunk)
            received += size
            literals += 1
            line = await raw.line()  # the rest of the response line after the literal
            received += len(line)
