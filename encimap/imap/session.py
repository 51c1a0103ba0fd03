"""One IMAP connection: reading commands (lines and literals, with limits), the state machine
(RFC 3501 3: not authenticated, authenticated, selected, logout), dispatch to the command
handlers and buffered writing (few large writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import secrets
import time
from typing import TYPE_CHECKING, Any

from encimap import db
from encimap.imap import parser
from encimap.imap.selected import Selected
from encimap.logs import get_logger

if TYPE_CHECKING:
    from encimap.auth import Principal
    from encimap.imap.service import Server

log = get_logger(__name__)

_FLUSH_AT = 256 * 1024  # write out once this much response is buffered


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class Reply(Exception):
    """The tagged completion of a failed command: NO or BAD with its text."""

    def __init__(self, status: str, text: str, tag: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.tag = tag  # set when the reply is raised before the command was parsed


def no(text: str) -> Reply:
    return Reply("NO", text)


def bad(text: str, tag: str = "") -> Reply:
    return Reply("BAD", text, tag)


class AlreadyReplied(Exception):
    """The handler wrote its tagged reply itself (STARTTLS must, before the handshake)."""


class Disconnect(Exception):
    """End the connection after writing `text` (an untagged BYE or nothing)."""

    def __init__(self, text: str = "") -> None:
        super().__init__(text)
        self.text = text


class Session:
    def __init__(
        self,
        server: Server,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        tls: bool,
        client_ip: str,
    ) -> None:
        self.server = server
        self.config = server.config.imap
        self.reader = reader
        self.writer = writer
        self.tls = tls
        self.client_ip = client_ip
        self.id = secrets.token_hex(6)
        self.state = State.NOT_AUTHENTICATED
        self.principal: Principal | None = None
        self.selected: Selected | None = None
        self.enabled: set[str] = set()
        self._out: list[bytes] = []
        self._buffered = 0
        self.started = time.monotonic()
        self.commands = 0

    # -- output --
    def send(self, data: bytes) -> None:
        self._out.append(data)
        self._buffered += len(data)

    def untagged(self, text: str) -> None:
        self.send(b"* " + text.encode() + b"\r\n")

    async def flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._buffered = 0
            self.writer.write(data)
        await self.writer.drain()

    async def maybe_flush(self) -> None:
        if self._buffered >= _FLUSH_AT:
            await self.flush()

    # -- input --
    async def read_line(self) -> bytes:
        """One line without its line ending; BAD-worthy lines raise `Reply`."""
        try:
            # asyncio.timeout, unlike wait_for, runs the read in this task (no task per line)
            async with asyncio.timeout(self.config.idle_timeout):
                line = await self.reader.readuntil(b"\n")
        except TimeoutError:
            raise Disconnect("BYE Autologout; idle for too long") from None
        except asyncio.LimitOverrunError as exc:
            head = await self._discard_line(exc.consumed)
            raise bad("Command line too long", parser.guess_tag(head)) from None
        except asyncio.IncompleteReadError:
            raise Disconnect() from None
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]

    async def _discard_line(self, consumed: int) -> bytes:
        """Skip the rest of an over-long line; returns its first bytes (for the tag)."""
        head = await self.reader.readexactly(consumed)
        for _ in range(1_000_000):
            try:
                await self.reader.readuntil(b"\n")
                break
            except asyncio.LimitOverrunError as exc:
                await self.reader.readexactly(exc.consumed)
        return head[:100]

    async def read_command(self) -> bytes:
        """A whole command with its literals, as `parser` expects it."""
        pieces: list[bytes] = []
        total = 0
        while True:
            line = await self.read_line()
            pieces.append(line)
            total += len(line)
            announced = parser.literal_announcement(line)
            if announced is None:
                return b"".join(pieces)
            size, synchronizing = announced
            if size > self.config.max_literal_size or total + size > self.config.max_literal_size:
                if not synchronizing:  # RFC 7888 4: the client sends it anyway; skip it
                    await self._skip(size)
                    await self.read_line()
                raise bad(
                    f"Literal too large (at most {self.config.max_literal_size} bytes)",
                    parser.guess_tag(pieces[0]),
                )
            if synchronizing:
                self.send(b"+ Ready for literal data\r\n")
                await self.flush()
            try:
                async with asyncio.timeout(self.config.idle_timeout):
                    data = await self.reader.readexactly(size)
            except (asyncio.IncompleteReadError, TimeoutError):
                raise Disconnect() from None
            pieces.append(b"\r\n" + data)
            total += size

    async def _skip(self, size: int) -> None:
        while size > 0:
            chunk = await self.reader.read(min(size, 1 << 20))
            if not chunk:
                raise Disconnect()
            size -= len(chunk)

    # -- the loop --
    async def run(self) -> None:
        from encimap.imap.commands import COMMANDS, capabilities

        self.untagged(f"OK [CAPABILITY {capabilities(self)}] encimap ready")
        try:
            await self.flush()
            while self.state is not State.LOGOUT:
                await self._one_command(COMMANDS)
                await self.flush()
        except Disconnect as exc:
            with contextlib.suppress(Exception):
                if exc.text:
                    self.untagged(exc.text)
                await self.flush()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await self.close()

    async def _one_command(self, commands: dict[str, Any]) -> None:
        tag = "*"
        try:
            raw = await self.read_command()
            self.commands += 1
            tag = parser.guess_tag(raw)
            if b"\x00" in raw:
                raise bad("NUL byte in command")
            try:
                tag, name, reader = parser.parse_head(raw)
            except parser.ParseError:
                raise bad("Error in IMAP command received by server") from None
            command = commands.get(name)
            if command is None:
                raise bad(f"Unknown command {name[:40]}")
            if self.state not in command.states:
                raise bad(f"{name} not allowed now ({self.state.value})")
            try:
                result = await command.handler(self, tag, reader)
            except parser.ParseError as exc:
                raise bad(f"Error in arguments: {exc}") from None
            await self.after_command(expunge_ok=command.expunge_ok)
            self.send(f"{tag} {result}\r\n".encode())
        except AlreadyReplied:
            pass
        except Reply as reply:
            if reply.status == "NO":
                await self.after_command(expunge_ok=False)
            self.send(f"{reply.tag or tag} {reply.status} {reply.text}\r\n".encode())
        except (Disconnect, asyncio.IncompleteReadError):
            raise
        except ConnectionError as exc:
            # The client's connection, or the database's (refused or reset during a
            # failover): only the client's ends the session.
            if self.writer.is_closing() or self.reader.at_eof():
                raise
            self._unavailable(tag, exc)
        except db.DATABASE_ERRORS as exc:
            self._unavailable(tag, exc)
        except Exception:
            log.exception("imap.server_bug", session=self.id)
            self.send(f"{tag} NO [SERVERBUG] Internal error\r\n".encode())

    def _unavailable(self, tag: str, exc: BaseException | None) -> None:
        log.warning("imap.unavailable", session=self.id, error=str(exc) or type(exc).__name__)
        self.send(f"{tag} NO [UNAVAILABLE] Temporary server failure, try again\r\n".encode())

    async def after_command(self, *, expunge_ok: bool) -> None:
        """Report what other sessions changed (RFC 3501 7: EXPUNGE only where allowed)."""
        if self.selected is not None:
            for line in await self.selected.sync(expunge_ok=expunge_ok):
                self.send(line)

    async def close(self) -> None:
        if self.selected is not None:
            self.selected.close()
            self.selected = None
        self.server.session_ended(self)
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), timeout=2)
        log.info(
            "imap.session",
            session=self.id,
            user=self.principal.username if self.principal else None,
            rip=self.client_ip,
            tls=self.tls,
            commands=self.commands,
            seconds=round(time.monotonic() - self.started, 3),
        )
