"""DATA read in whole buffers instead of aiosmtpd's line at a time, same result.

aiosmtpd reads DATA with one `readuntil(b"\\r\\n")` and a few Python statements per line: about
a fifth of the intake's CPU per message. Here the buffer is searched for the end of data
(`CRLF . CRLF`, the start of DATA counting as a line start) and a message whose lines are all
within `line_length_limit` and whose size is within `data_size_limit` is unstuffed with one
`replace`. Anything else (a long line, too much data) goes through the same line-by-line state
machine as aiosmtpd's, so the same error wins. Lines end at CRLF only, as in aiosmtpd: a bare CR
or LF is data. Bytes after the end of data stay in the stream for the next command.
tests/test_smtpdata.py checks replies, stored content and the rest of the stream against
aiosmtpd's own smtp_DATA.

`data_budget` bounds the DATA bytes every session of the process holds at once
(`max_data_bytes_in_flight`): each chunk is reserved as it is kept, and a DATA whose chunk does
not fit is read to its end and dropped, like one over `data_size_limit`, and answered
INSUFFICIENT_STORAGE (RFC 3463 4.3.1, what Postfix answers when its queue is full). What a DATA
reserved is given back when the command has ended (answered, failed, the client gone).
"""

from __future__ import annotations

import asyncio

from aiosmtpd.smtp import MISSING, SMTP, _DataState, syntax

from encimap.service.bytebudget import ByteBudget

END_OF_DATA = b"\r\n.\r\n"
_READ_SIZE = 1 << 16
INSUFFICIENT_STORAGE = "452 4.3.1 Insufficient system storage"
# aiosmtpd's replies for the data it refuses.
_REFUSALS = {
    _DataState.TOO_LONG: "500 Line too long (see RFC5321 4.5.3.1.6)",
    _DataState.TOO_MUCH: "552 Error: Too much mail data",
}


class FastDataReading(SMTP):
    """Mixin for SMTP/LMTP servers whose handler implements handle_DATA on bytes.

    `data_timeout` (seconds, 0 = aiosmtpd's per-command timeout) bounds the whole data phase,
    from the 354 to the final dot, however the client paces its bytes."""

    data_timeout: float = 0.0
    data_budget: ByteBudget | None = None  # the process's, shared by its sessions
    _data_held = 0  # bytes this session's DATA reserved in data_budget

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if self._decode_data or "DATA" not in self._handle_hooks:
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            await self._receive_data()
        finally:
            if self.data_budget is not None:
                self.data_budget.release(self._data_held)
            self._data_held = 0

    async def _receive_data(self) -> None:
        """From the 354 to the reply."""
        assert self.envelope is not None
        if self.data_timeout:
            self._reset_timeout(self.data_timeout)
        body, refusal = await self._read_data()
        if body is None:  # the connection closed during DATA
            return
        if self.data_timeout:
            self._reset_timeout()  # the handler's work and the next command: the usual budget
        if refusal is not None:
            await self.push(refusal)
            self._set_post_data_state()
            return
        # RFC 5321 4.5.2: drop the first dot of every line that starts with one.
        content = body[1:] if body.startswith(b".") else body
        content = content.replace(b"\r\n.", b"\r\n")
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> tuple[bytes | None, str | None]:
        """(the lines before the lone dot, as sent, and the reply refusing them if any); None
        if the peer left. Once the data is known to be refused, it is read and dropped, never
        kept."""
        limit = self.data_size_limit
        buffer = bytearray(b"\r\n")  # DATA starts at a line start
        kept = 2  # bytes of `buffer` before the current chunk's search window
        state = _DataState.NOMINAL
        busy = False  # a chunk did not fit in data_budget
        checked, size = 2, 0  # complete lines checked so far (over the limit): end, size
        while True:
            try:
                chunk = await self._reader.read(_READ_SIZE)
            except asyncio.CancelledError:
                self._writer.close()
                raise
            if not chunk:
                self._writer.close()
                return None, None
            buffer += chunk
            if not busy and state is _DataState.NOMINAL:
                busy = not self._reserve_data(len(chunk))
            end = buffer.find(END_OF_DATA, max(0, kept - 4))
            if end >= 0:
                self._reader._buffer[:0] = buffer[end + 5 :]  # type: ignore[attr-defined]
                if busy:
                    return b"", INSUFFICIENT_STORAGE
                if state is not _DataState.NOMINAL:
                    return b"", _REFUSALS[state]
                body = bytes(buffer[2 : end + 2])
                return body, _REFUSALS.get(self._check(body)[0])
            if not busy and state is _DataState.NOMINAL and limit and len(buffer) - 2 > limit:
                state, checked, size = self._refusal(buffer, checked, size)
            if busy or state is not _DataState.NOMINAL:
                del buffer[:-4]  # keep what may begin the end of data
            kept = len(buffer)

    def _reserve_data(self, size: int) -> bool:
        """Take `size` more bytes of data_budget for this DATA: whether they fit."""
        if self.data_budget is None:
            return True
        if not self.data_budget.reserve(size):
            return False
        self._data_held += size
        return True

    def _refusal(self, buffer: bytearray, checked: int, size: int) -> tuple[_DataState, int, int]:
        """More than data_size_limit arrived: the error aiosmtpd's order gives, NOMINAL while
        that depends on how the last, incomplete line ends; and how far (and how many bytes
        of) complete lines are checked. The lines before `checked` (`size` bytes) were found
        NOMINAL by an earlier call and are not read again: a client that sent the last line
        a byte at a time made each byte cost the whole buffer (25 MB: 37 ms a byte, for up
        to a line's length of bytes per DATA)."""
        last = buffer.rfind(b"\r\n")
        state, size = self._check(bytes(buffer[checked : last + 2]), size)
        # The incomplete line's known length, without a CR that may begin its CRLF.
        tail = len(buffer) - last - 2 - buffer.endswith(b"\r")
        if state is _DataState.NOMINAL and tail > self.line_length_limit:
            return _DataState.TOO_LONG, last + 2, size  # aiosmtpd's StreamReader overruns
        return state, last + 2, size

    def _check(self, body: bytes, size: int = 0) -> tuple[_DataState, int]:
        """The outcome aiosmtpd's DATA loop reaches for these complete lines after `size`
        bytes of lines it passed, and the size of all of them when it passes these too."""
        lines = body.split(b"\r\n")
        lines.pop()  # after the last CRLF
        limit = self.data_size_limit
        longest = max(map(len, lines), default=0) + 2
        if longest <= self.line_length_limit and not (limit and size + len(body) > limit):
            return _DataState.NOMINAL, size + len(body)
        for line in lines:
            length = len(line) + 2
            if length - 2 > self.line_length_limit:  # aiosmtpd: StreamReader limit overrun
                return _DataState.TOO_LONG, size
            size += length
            if limit and size > limit:
                return _DataState.TOO_MUCH, size
            if length > self.line_length_limit:
                return _DataState.TOO_LONG, size
        return _DataState.NOMINAL, size
