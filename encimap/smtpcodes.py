"""Enhanced status codes (RFC 2034, RFC 3463) on every reply of encimap's SMTP/LMTP servers.

A server that announces ENHANCEDSTATUSCODES must put a code on every 2xx, 4xx and 5xx reply
but the greeting and the EHLO/LHLO keyword list. encimap's own replies carry theirs; the ones
aiosmtpd words itself (syntax and sequence errors, NOOP, RSET, QUIT, HELP) and upstream replies
passed through without one get one here, on their way out.
"""

from __future__ import annotations

import re
from typing import Any

from aiosmtpd.smtp import SMTP

_HAS_ENHANCED_CODE = re.compile(r"[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
_NEEDS_ENHANCED_CODE = re.compile(r"([245]\d\d)([ -])")
# RFC 3463 codes for the replies aiosmtpd words itself; any other reply without one gets its
# class alone (X.0.0, "other or undefined").
_ENHANCED_BY_CODE = {
    "221": "2.0.0",
    "250": "2.0.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "555": "5.5.4",
}


def with_enhanced_codes(text: str) -> str:
    """Each line of reply `text` with an enhanced status code after its reply code.

    Lines that have one, and the greeting (220), stay as they are; so must the lines of the
    LHLO/EHLO reply, which are keywords (the caller leaves those out).
    """
    return "\r\n".join(_with_enhanced_code(line) for line in text.split("\r\n"))


def _with_enhanced_code(line: str) -> str:
    match = _NEEDS_ENHANCED_CODE.match(line)
    if match is None or match[1] == "220" or _HAS_ENHANCED_CODE.match(line):
        return line
    code = match[1]
    enhanced = _ENHANCED_BY_CODE.get(code, f"{code[0]}.0.0")
    return f"{code}{match[2]}{enhanced} {line[4:]}"


class EnhancedStatusCodes(SMTP):
    """aiosmtpd's protocol announcing `extensions` (ENHANCEDSTATUSCODES among them) and giving
    every reply its code. The handler's EHLO hook returns `extension_reply(responses)`."""

    extensions: tuple[str, ...] = ("ENHANCEDSTATUSCODES",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keyword_lines = 0  # lines of the LHLO/EHLO reply still to send

    def extension_reply(self, lines: list[str]) -> list[str]:
        """The LHLO/EHLO reply aiosmtpd made, with our extensions."""
        keywords = [f"250-{name}" for name in self.extensions]
        reply = [*lines[:-1], *keywords, *lines[-1:]]
        self._keyword_lines = len(reply)
        return reply

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        if self._keyword_lines:
            self._keyword_lines -= 1
        else:
            text = with_enhanced_codes(text)
        await super().push(text)
