"""A fast path for the address in MAIL FROM and RCPT TO, for our aiosmtpd servers.

aiosmtpd parses every MAIL and RCPT argument with the email package's RFC 5322 parser (and
defines a typing.Protocol class on each call): 9 % of the intake's CPU per message. Nearly
every address an MTA or a mail client sends is `<dot-atom@host.name>`, for which that parser's
result is exactly the text between the brackets, so that form is taken directly. Anything else
(quoted local parts, comments, source routes, address literals, non-ASCII, `<>`) goes to
aiosmtpd's parser as before; tests/test_smtpaddress.py checks both agree.
"""

from __future__ import annotations

import re

from aiosmtpd.smtp import SMTP

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ANGLE_ADDRESS = re.compile(
    rf"[ \t]*<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*"
)


class FastAddressParsing(SMTP):
    """Mixin for SMTP/LMTP servers: `_getaddr` without the RFC 5322 parser for plain forms."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_ANGLE_ADDRESS.match(arg)
        # A comment after the address is the parser's to skip.
        if match is None or arg.startswith("(", match.end()):
            return super()._getaddr(arg)
        address = match.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, arg[match.end() :]
