"""One IMAP connection: reading commands (lines and literals, with limits), the state machine
(RFC 3501 3: not authenticated, authenticated, selected, logout), dispatch to the command
handlers and buffered writing (few large writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from encimap.db import DATABASE_ERRORS, LIMIT_ERRORS
from encimap.imap import parser, shared
from encimap.imap.selected import Selected
from encimap.logs import get_logger
from encimap.metrics import IMAP_COMMAND_SECONDS, IMAP_OUTPUT_PEAK, IMAP_SESSIONS_ENDED

if TYPE_CHECKING:
    from encimap.auth import Principal
    from encimap.imap.service import Server

log = get_logger(__name__)

_FLUSH_AT = 256 * 1024  # write out once this much response is buffered
_WRITE_CHUNK = 64 * 1024  # larger pieces (message literals) go out in chunks of this size
_TAIL = 30  # bytes kept of the end of an over-long line: enough for a literal's "{n+}"
_output_peak = 0


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


class ClientGone(Exception):
    """The client's connection failed or closed (never raised for a database error, which
    may be an OSError too: asyncpg's ConnectionRefusedError is a ConnectionError)."""


class Disconnect(Exception):
    """End the connection after writing `text` (an untagged BYE or nothing); `reason` counts
    it in IMAP_SESSIONS_ENDED."""

    def __init__(self, text: str = "", reason: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.reason = reason


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
        self.utf8_names = False  # mailbox names in UTF-8 (IMAP4rev2), not modified UTF-7
        self._out: list[bytes] = []
        self._buffered = 0
        self.started = time.monotonic()
        self.login_deadline = asyncio.get_running_loop().time() + self.config.login_timeout
        self._command_deadline: float | None = None
        self.commands = 0
        self._task: asyncio.Task[Any] | None = None
        self._ending: Disconnect | None = None  # set by end()
        self._interruptible = False  # waiting for the client between commands (or in IDLE)
        # NOTIFY's notification set (encimap.imap.commands.notify.Notify) while one is set
        self.notify: Any = None
        # The events barrier started when the command arrived (`_early_barrier`), and whether
        # the command may have changed the selected mailbox
        self._barrier: asyncio.Future[None] | None = None
        self._wrote = False
        self._literal_bytes = 0  # reserved in server.literal_budget by the current command

    @property
    def waiting(self) -> bool:
        """Waiting for the client, no command half-answered: untagged responses may go out."""
        return self._interruptible

    # -- output --
    def send(self, data: bytes) -> None:
        self._out.append(data)
        self._buffered += len(data)

    def untagged(self, text: str) -> None:
        self.send(b"* " + text.encode() + b"\r\n")

    async def send_large(self, data: bytes) -> None:
        """Queue `data`, which may be as large as a message: a large piece is written in
        chunks, each drained before the next, so a response of any size holds at most about
        `_FLUSH_AT + _WRITE_CHUNK` bytes here and in the transport (Dovecot streams too)."""
        if len(data) < _WRITE_CHUNK:
            self.send(data)
            await self.maybe_flush()
            return
        await self.flush()
        view = memoryview(data)
        for start in range(0, len(view), _WRITE_CHUNK):
            self._write(view[start : start + _WRITE_CHUNK])
            await self._drain()

    async def flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._buffered = 0
            self._write(data)
        await self._drain()

    def flush_now(self) -> bool:
        """Write the queued output without waiting for the client to take it; False, with
        nothing written, when the client is behind on reading (then `flush` must wait)."""
        if self.writer.transport.get_write_buffer_size() >= _FLUSH_AT:
            return False
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._buffered = 0
            self._write(data)
        return True

    async def maybe_flush(self) -> None:
        if self._buffered >= _FLUSH_AT:
            await self.flush()

    def _write(self, data: bytes | memoryview) -> None:
        self.writer.write(data)
        held = self.writer.transport.get_write_buffer_size()
        global _output_peak
        if held > _output_peak:
            _output_peak = held
            IMAP_OUTPUT_PEAK.set(held)

    async def _drain(self) -> None:
        """Wait until the client took the output; one that reads nothing for the idle
        timeout (before login: past the login deadline) is gone."""
        try:
            async with asyncio.timeout_at(self._budget(self.config.idle_timeout)):
                await self.writer.drain()
        except (TimeoutError, ConnectionError, OSError):
            raise ClientGone() from None

    # -- input --
    def _budget(self, seconds: float) -> float:
        """The loop time by which the next read must end: `seconds` from now, and before
        login never later than the login deadline (RFC 3501 5.4: autologout is for
        authenticated sessions; an unauthenticated one gets `login_timeout` in all)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        if self.state is State.NOT_AUTHENTICATED:
            deadline = min(deadline, self.login_deadline)
        return deadline

    def _expired(self, deadline: float) -> Disconnect:
        if self.state is State.NOT_AUTHENTICATED and deadline >= self.login_deadline:
            return Disconnect("BYE Disconnected for inactivity during login", "login_timeout")
        if self._command_deadline is not None and deadline == self._command_deadline:
            return Disconnect("BYE Command not received in time", "command_timeout")
        return Disconnect("BYE Autologout; idle for too long", "idle")

    async def read_line(self, deadline: float | None = None) -> bytes:
        """One line without its line ending, within a command (IDLE's DONE, a SASL response):
        an over-long one is skipped, with the literals it announces, and answered BAD with
        the command's tag."""
        line, tail = await self._line(deadline)
        if tail is not None:
            await self._skip_command(parser.literal_announcement(tail))
            raise bad("Command line too long")
        return line

    async def _line(self, deadline: float | None) -> tuple[bytes, bytes | None]:
        """`_next_line` within `deadline` (default: the idle timeout)."""
        if deadline is None:
            deadline = self._budget(self.config.idle_timeout)
        try:
            # asyncio.timeout_at, unlike wait_for, runs the read in this task (no task per line)
            async with asyncio.timeout_at(deadline):
                return await self._next_line()
        except TimeoutError:
            raise self._expired(deadline) from None
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            raise ClientGone() from None

    async def _next_line(self) -> tuple[bytes, bytes | None]:
        """(line without its line ending, None); for a line over the limit, skipped, (its
        first bytes, its last bytes), so the caller can name its tag and see whether it
        announced a literal."""
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            return await self._discard_line(exc.consumed)
        return (line[:-2] if line.endswith(b"\r\n") else line[:-1]), None

    async def _discard_line(self, consumed: int) -> tuple[bytes, bytes]:
        """Skip the rest of an over-long line: (its first bytes, its last bytes without the
        line ending). Memory stays at one reader buffer however long the line."""
        head = await self.reader.readexactly(consumed)
        tail = head[-_TAIL:]
        while True:
            try:
                tail = (tail + await self.reader.readuntil(b"\n"))[-_TAIL - 2 :]
                break
            except asyncio.LimitOverrunError as exc:
                tail = (tail + await self.reader.readexactly(exc.consumed))[-_TAIL:]
        return head[:100], tail.rstrip(b"\r\n")

    async def _skip_command(self, announced: tuple[int, bool] | None) -> None:
        """The rest of a refused command: the non-synchronizing literals the client sends
        anyway (RFC 7888 4) and the lines after them, up to the command's end, so that no
        literal's content is ever read as a command. A synchronizing literal ends it: the
        client waits for "+" and gets the refusal instead."""
        deadline = self._command_deadline or self._budget(self.config.command_timeout)
        while announced is not None and not announced[1]:
            size = announced[0]
            if self.state is State.NOT_AUTHENTICATED and size > self.literal_limit():
                raise Disconnect("BYE Literal size too large", "literal_too_large")
            await self._skip(size, deadline)
            line, tail = await self._line(deadline)
            announced = parser.literal_announcement(line if tail is None else tail)

    def literal_limit(self) -> int:
        """Before login a literal only carries a username or password (Dovecot's imap-login
        allows 8 KiB); after it, a message (APPEND), up to `max_literal_size`."""
        if self.state is State.NOT_AUTHENTICATED:
            return self.config.max_literal_before_login
        return self.config.max_literal_size

    async def read_command(self) -> tuple[bytes, bool]:
        """A whole command with its literals, as `parser` expects it, and whether a NUL came
        outside a literal8 (RFC 3516 4.2: only a literal8 may carry one). The first line may
        take the idle timeout; the rest of the command must arrive within
        `command_timeout` of it (a client trickling literals is cut off). A refused command
        (a line or literal over its limit) is read to its end and answered BAD."""
        notify = self.notify
        if notify is not None:
            notify.wait_start(self)
        try:
            with self.waiting_for_client():
                line, tail = await self._line(None)
        finally:
            if notify is not None:
                await notify.wait_end(self)
        # One time budget for the rest, not one per line and literal: a command of many small
        # literals leaves no cancelled timer behind each
        self._command_deadline = deadline = self._budget(self.config.command_timeout)
        try:
            async with asyncio.timeout_at(deadline):
                return await self._rest_of_command(line, tail)
        except TimeoutError:
            raise self._expired(deadline) from None
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            raise ClientGone() from None
        finally:
            self._command_deadline = None

    async def _rest_of_command(self, line: bytes, tail: bytes | None) -> tuple[bytes, bool]:
        command = bytearray()  # one buffer: many small literals cost their bytes, no more
        stray_nul = False
        while True:
            if tail is not None:
                await self._skip_command(parser.literal_announcement(tail))
                raise bad("Command line too long", parser.guess_tag(bytes(command or line)))
            command += line
            stray_nul = stray_nul or b"\x00" in line
            announced = parser.literal_announcement(line)
            if announced is None:
                return bytes(command), stray_nul
            size, synchronizing = announced
            limit = self.literal_limit()
            if size > limit or len(command) + size > limit:
                if self.state is State.NOT_AUTHENTICATED:
                    raise Disconnect("BYE Literal size too large", "literal_too_large")
                await self._skip_command(announced)
                raise bad(
                    f"[TOOBIG] Literal too large (at most {limit} bytes)",
                    parser.guess_tag(bytes(command[:100])),
                )
            if not self._reserve_literal(size):
                await self._skip_command(announced)
                raise Reply(
                    "NO",
                    "[UNAVAILABLE] Server busy, try again later",
                    parser.guess_tag(bytes(command[:100])),
                )
            if synchronizing:
                self.send(b"+ Ready for literal data\r\n")
                await self.flush()
            data = await self.reader.readexactly(size)
            if not parser.announces_literal8(line):
                stray_nul = stray_nul or b"\x00" in data
            command += b"\r\n"
            command += data
            line, tail = await self._next_line()

    def _reserve_literal(self, size: int) -> bool:
        """Reserve a literal's bytes in the process's budget (`max_literal_bytes_in_flight`)
        until the command ends (`_release_literals`): whether they fit. A refused literal is
        never read into memory: a synchronizing one is not sent (no "+"), a non-synchronizing
        one is skipped."""
        budget = self.server.literal_budget
        if not budget.reserve(size):
            log.warning(
                "imap.literal_budget",
                session=self.id,
                size=size,
                command_held=self._literal_bytes,
                held=budget.held,
                limit=budget.limit,
            )
            return False
        self._literal_bytes += size
        return True

    def _release_literals(self) -> None:
        self.server.literal_budget.release(self._literal_bytes)
        self._literal_bytes = 0

    async def _skip(self, size: int, deadline: float) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                while size > 0:
                    chunk = await self.reader.read(min(size, 1 << 20))
                    if not chunk:
                        raise ClientGone()
                    size -= len(chunk)
        except TimeoutError:
            raise self._expired(deadline) from None
        except (ConnectionError, OSError):
            raise ClientGone() from None

    # -- ending from outside --
    def end(self, text: str, reason: str) -> None:
        """End this session with an untagged `text` (a BYE): at once if it is waiting for
        the client, else as soon as the command in progress has answered."""
        if self._ending is not None:
            return
        self._ending = Disconnect(text, reason)
        if self._interruptible and self._task is not None:
            self._task.cancel()

    @contextlib.contextmanager
    def waiting_for_client(self) -> Iterator[None]:
        """A stretch in which `end()` may interrupt the session (no command half-answered)."""
        if self._ending is not None:
            raise self._ending
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    # -- the loop --
    async def run(self) -> None:
        from encimap.imap.commands import COMMANDS, capabilities

        self._task = asyncio.current_task()
        self.untagged(f"OK [CAPABILITY {capabilities(self)}] encimap ready")
        try:
            try:
                await self.flush()
                while self.state is not State.LOGOUT:
                    await self._one_command(COMMANDS)
                    if self._ending is not None:
                        raise self._ending
                    await self.flush()
            except asyncio.CancelledError:
                if self._ending is None or self._task is None:
                    raise
                self._task.uncancel()
                raise self._ending from None
        except Disconnect as exc:
            if exc.reason:
                IMAP_SESSIONS_ENDED.labels(exc.reason).inc()
            with contextlib.suppress(Exception):
                if exc.text:
                    self.untagged(exc.text)
                await self.flush()
        except ClientGone:
            self.writer.transport.abort()
        finally:
            await self.close()

    async def _one_command(self, commands: dict[str, Any]) -> None:
        tag = "*"
        timed: str | None = None  # a known command's name, once its line is read
        try:
            raw, stray_nul = await self.read_command()
            started = time.perf_counter()
            self.commands += 1
            tag = parser.guess_tag(raw)
            if stray_nul:
                raise bad("NUL byte in command")
            try:
                tag, name, reader = parser.parse_head(raw)
            except parser.ParseError:
                raise bad("Error in IMAP command received by server") from None
            reader.utf8_names = self.utf8_names
            command = commands.get(name)
            if command is None:
                raise bad(f"Unknown command {name[:40]}")
            timed = name
            if self.state not in command.states:
                raise bad(f"{name} not allowed now ({self.state.value})")
            self._barrier, self._wrote = self._early_barrier(command.writes(raw))
            try:
                result = await command.handler(self, tag, reader)
            except parser.ParseError as exc:
                raise bad(f"Error in arguments: {exc}") from None
            await self.after_command(expunge_ok=command.expunge_ok)
            if self.selected is not None and self.selected.report_highest:
                result = self.selected.with_highest_modseq(result)
            self.send(f"{tag} {result}\r\n".encode())
        except AlreadyReplied:
            pass
        except Reply as reply:
            if reply.status == "NO":
                with contextlib.suppress(*DATABASE_ERRORS):
                    await self.after_command(expunge_ok=False)
            self.send(f"{reply.tag or tag} {reply.status} {reply.text}\r\n".encode())
        except (Disconnect, ClientGone):
            raise
        except LIMIT_ERRORS as exc:
            log.info("imap.limit", session=self.id, error=str(exc))
            self.send(f"{tag} NO [LIMIT] Request exceeds a server limit\r\n".encode())
        except DATABASE_ERRORS as exc:
            # The client's socket errors arrive as ClientGone; an OSError here (asyncpg's
            # ConnectionRefusedError while PostgreSQL is down) is the database's.
            log.warning("imap.unavailable", session=self.id, error=str(exc) or type(exc).__name__)
            self.send(f"{tag} NO [UNAVAILABLE] Temporary server failure, try again\r\n".encode())
        except Exception:
            log.exception("imap.server_bug", session=self.id)
            self.send(f"{tag} NO [SERVERBUG] Internal error\r\n".encode())
        finally:
            self._release_literals()
            if timed is not None:
                IMAP_COMMAND_SECONDS.labels(timed).observe(time.perf_counter() - started)

    def _early_barrier(self, writes: bool) -> tuple[asyncio.Future[None] | None, bool]:
        """(the events barrier, started now if the session has a mailbox selected; whether the
        command may write). Started when the command arrives, its round trip runs alongside the
        command's own work.

        With QRESYNC a command that may write starts it only after its work (`after_command`):
        the HIGHESTMODSEQ its reply may carry is read then (`Selected.before_sync`), and every
        change up to it must have been dispatched by the barrier that follows."""
        selected = self.selected
        if selected is None or (writes and selected.qresync):
            return None, writes
        return self.server.listener.barrier(), writes

    async def after_command(self, *, expunge_ok: bool) -> None:
        """Report what other sessions changed (RFC 3501 7: EXPUNGE only where allowed):
        every change committed before the command arrived, whatever the NOTIFY timing (the
        barrier started then, or now when none was).

        After a command that may have changed the mailbox, reads shared with other sessions
        (encimap.imap.shared) that began before now are not joined: one from before the
        session's own change, whose NOTIFY may not have been dispatched yet, would report the
        old flags and mod-sequences after the command's reply reported the new ones."""
        notify = self.notify
        barrier, self._barrier = self._barrier, None
        wrote, self._wrote = self._wrote, False
        if self.selected is not None:
            if wrote:
                shared.written(self.selected.mailbox.id)
            await self.selected.before_sync()
            await (barrier if barrier is not None else self.server.listener.barrier())
            if notify is not None:
                lines = await notify.report_selected(self, expunge_ok=expunge_ok)
            else:
                lines = await self.selected.sync(expunge_ok=expunge_ok)
            for line in lines:
                self.send(line)
        if notify is not None:
            for line in notify.take_pending():
                self.send(line)

    async def close(self) -> None:
        if self.notify is not None:
            self.notify.stop(self)
            self.notify = None
        if self.selected is not None:
            self.selected.close()
            self.selected = None
        self.server.session_ended(self)
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), timeout=2)
        # a client that stopped reading leaves output behind: drop it with the connection
        self.writer.transport.abort()
        log.info(
            "imap.session",
            session=self.id,
            pid=os.getpid(),
            user=self.principal.username if self.principal else None,
            rip=self.client_ip,
            tls=self.tls,
            commands=self.commands,
            seconds=round(time.monotonic() - self.started, 3),
        )
