"""The address in MAIL FROM and RCPT TO, parsed once, for every SMTP/LMTP server of encimap.

`parse_path` reads the RFC 5321 section 4.1.2 grammar (`Path`, `Mailbox`, `Dot-string`,
`Quoted-string`, `Domain`, `address-literal`; with SMTPUTF8, RFC 6531's UTF-8 in atoms, quoted
strings and labels) and returns the mailbox in one canonical form: a quoted local part whose
content is a dot-string loses its quotes, any other keeps them with only `"` and `\\` escaped
(RFC 5321 4.1.2: the form with the least quoting). That text is what the server hands on: the
ownership check, the upstream MAIL/RCPT, the store and the log all see exactly it, and parsing
it again gives it back unchanged.

What the grammar has no place for is refused, never repaired: control characters (CR, LF, NUL,
TAB...) anywhere in the argument, unbalanced quotes or brackets, an empty label. aiosmtpd's own
parser (the email package's RFC 5322 one) accepted a bare CR inside a quoted local part, which
a later `email.utils.parseaddr` read as a different address.

Cost is linear in the argument: the loop advances on every step, each step matches one run of
a single character class at a fixed position (no backtracking).
"""

from __future__ import annotations

import re

from aiosmtpd.smtp import SMTP

from encimap.delivery.replies import Reply

BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
NULL_PATH = "<>"  # MAIL FROM:<> (bounces), as the servers pass it on
POSTMASTER = "postmaster"  # RCPT TO:<Postmaster> needs no domain (RFC 5321 4.1.1.3)

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_UTF8 = "\u0080-\ud7ff\ue000-\U0010ffff"  # non-ASCII, but no surrogate-escaped bad bytes
_ATOM = {False: re.compile(f"[{_ATEXT}]+"), True: re.compile(f"[{_ATEXT}{_UTF8}]+")}
_QTEXT = {
    False: re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+"),
    True: re.compile(f"[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e{_UTF8}]+"),
}
_LABEL = {False: re.compile("[A-Za-z0-9-]+"), True: re.compile(f"[A-Za-z0-9{_UTF8}-]+")}
_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]+\]")  # dcontent (RFC 5321 4.1.3)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DOT_STRING = {
    utf8: re.compile(f"{atom.pattern}(?:\\.{atom.pattern})*") for utf8, atom in _ATOM.items()
}
# The form nearly every client and MTA sends, taken in one match (the rest goes step by step).
_SIMPLE_ANGLE_ADDRESS = re.compile(
    rf"<([{_ATEXT}]+(?:\.[{_ATEXT}]+)*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    rf"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>(?= |$)"
)
MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2


class AddressError(ValueError):
    """The argument is not an RFC 5321 path; the text says what is wrong (for the log)."""


def parse_path(
    arg: str, *, utf8: bool = False, local_part_limit: int = 0, null: bool = True
) -> tuple[str, str]:
    """(canonical mailbox, parameters after it) for a MAIL/RCPT argument after the colon.

    The null path `<>` gives NULL_PATH when `null` allows it. Leading spaces and a missing pair
    of angle brackets are tolerated (clients send both); nothing else is.
    """
    if _CONTROL.search(arg):
        raise AddressError("control character in the argument")
    start = len(arg) - len(arg.lstrip(" "))
    simple = _SIMPLE_ANGLE_ADDRESS.match(arg, start)
    if simple is not None:
        mailbox, end = simple.group(1), simple.end()
    elif arg.startswith("<", start):
        mailbox, end = _bracketed(arg, start + 1, utf8, null)
    else:
        mailbox, end = _mailbox(arg, start, utf8)
    if end < len(arg) and arg[end] != " ":
        raise AddressError("text after the address")
    local, _, domain = mailbox.rpartition("@")
    if local_part_limit and len(local) > local_part_limit:
        raise AddressError("local part too long")
    if len(domain) > MAX_DOMAIN:
        raise AddressError("domain too long")
    return mailbox, arg[end:].lstrip(" ")


def canonical_local_part(value: str, *, utf8: bool = True) -> str:
    """The least-quoted form of a local part's (unquoted) content."""
    if _DOT_STRING[utf8].fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bracketed(arg: str, i: int, utf8: bool, null: bool) -> tuple[str, int]:
    if arg.startswith(">", i):
        if not null:
            raise AddressError("null path")
        return NULL_PATH, i + 1
    if arg.startswith("@", i):  # source route: accepted and ignored (RFC 5321 4.1.1.3)
        i = _domain(arg, i + 1, utf8)[1]
        while arg.startswith(",@", i):
            i = _domain(arg, i + 2, utf8)[1]
        if not arg.startswith(":", i):
            raise AddressError("bad source route")
        i += 1
    mailbox, i = _mailbox(arg, i, utf8)
    if not arg.startswith(">", i):
        raise AddressError("missing '>'")
    return mailbox, i + 1


def _mailbox(arg: str, i: int, utf8: bool) -> tuple[str, int]:
    local, i = _local_part(arg, i, utf8)
    if not arg.startswith("@", i):
        if local.lower() == POSTMASTER:
            return local, i
        raise AddressError("missing '@domain'")
    domain, i = _domain(arg, i + 1, utf8)
    return f"{local}@{domain}", i


def _local_part(arg: str, i: int, utf8: bool) -> tuple[str, int]:
    if not arg.startswith('"', i):
        match = _DOT_STRING[utf8].match(arg, i)
        if match is None:
            raise AddressError("bad local part")
        return match.group(), match.end()
    i += 1
    parts: list[str] = []
    qtext = _QTEXT[utf8]
    while True:
        if (match := qtext.match(arg, i)) is not None:
            parts.append(match.group())
            i = match.end()
        elif arg.startswith("\\", i) and i + 1 < len(arg) and " " <= arg[i + 1] <= "~":
            parts.append(arg[i + 1])
            i += 2
        elif arg.startswith('"', i):
            return canonical_local_part("".join(parts), utf8=utf8), i + 1
        else:
            raise AddressError("bad quoted local part")


def _domain(arg: str, i: int, utf8: bool) -> tuple[str, int]:
    start = i
    if (literal := _LITERAL.match(arg, i)) is not None:
        return literal.group(), literal.end()
    label = _LABEL[utf8]
    while True:
        match = label.match(arg, i)
        if match is None or match.group().startswith("-") or match.group().endswith("-"):
            raise AddressError("bad domain")
        i = match.end()
        if not arg.startswith(".", i):
            break
        i += 1
    return arg[start:i], i


class StrictAddressParsing(SMTP):
    """Mixin for encimap's aiosmtpd servers: MAIL/RCPT/VRFY addresses through `parse_path`,
    refusals with a defined reply (501 5.1.7 for the sender, 501 5.1.3 for a recipient)."""

    _parsing_recipient = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        if not arg:
            return "", ""
        return parse_path(
            arg,
            utf8=self.enable_SMTPUTF8,
            local_part_limit=self.local_part_limit,
            null=not self._parsing_recipient,  # a recipient is never the null path
        )

    async def smtp_MAIL(self, arg: str | None) -> None:
        try:
            await super().smtp_MAIL(arg)
        except AddressError:
            await self.push(str(BAD_SENDER))

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._parsing_recipient = True
        try:
            await super().smtp_RCPT(arg)
        except AddressError:
            await self.push(str(BAD_RECIPIENT))
        finally:
            self._parsing_recipient = False

    async def smtp_VRFY(self, arg: str) -> None:
        try:
            await super().smtp_VRFY(arg)
        except AddressError:
            await self.push(f"502 5.5.2 Could not VRFY {arg!r}")
