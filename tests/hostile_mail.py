"""Hostile and degenerate messages, each built at a chosen size `n`, for the intake, the
encryption and the IMAP metadata tests. Every line is at most 1000 bytes (what SMTP and LMTP
carry), CRLF line endings unless the case is about line endings."""

from __future__ import annotations

from collections.abc import Callable

HEAD = (
    b"From: Sender <sender@example.org>\r\nTo: inbox@vault.test\r\nSubject: hostile\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <hostile@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
)
BINARY = b"Content-Transfer-Encoding: binary\r\n"


def nested_multipart(n: int, *, binary: bool = False, media: bytes = b"multipart/mixed") -> bytes:
    """`n` multiparts, each the only part of the one around it; a text leaf at the bottom
    (binary: announced as binary, with bytes that are not text)."""
    opening = b"".join(
        b"--b%dx\r\nContent-Type: multipart/mixed; boundary=b%dx\r\n\r\n" % (i, i + 1)
        for i in range(n)
    )
    leaf = b"--b%dx\r\nContent-Type: application/octet-stream\r\n%s\r\n\x00\xff\r\x00\n\r\n" % (
        n,
        BINARY if binary else b"",
    )
    closing = b"".join(b"--b%dx--\r\n" % i for i in range(n, -1, -1))
    return HEAD + b"Content-Type: %s; boundary=b0x\r\n\r\n" % media + opening + leaf + closing


def nested_message(n: int, *, binary: bool = False) -> bytes:
    """message/rfc822 inside message/rfc822, `n` deep."""
    level = b"From: level@example.org\r\nContent-Type: message/rfc822\r\n%s\r\n" % (
        BINARY if binary else b""
    )
    return (
        HEAD
        + b"Content-Type: message/rfc822\r\n\r\n"
        + level * n
        + b"From: z@example.org\r\n\r\nbottom\r\n"
    )


def many_parts(n: int, *, media: bytes = b"multipart/mixed") -> bytes:
    part = b"--p\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n\r\nx\r\n"
    return HEAD + b"Content-Type: %s; boundary=p\r\n\r\n" % media + part * n + b"--p--\r\n"


def many_fields(n: int) -> bytes:
    return HEAD + b"X-Field: value\r\n" * n + b"\r\nbody\r\n"


def many_recipients(n: int) -> bytes:
    """`n` To fields (kept in clear, so also in the stored message's ENVELOPE)."""
    return HEAD + b"To: someone@example.org\r\n" * n + b"\r\nbody\r\n"


def _folded_words(n: int) -> bytes:
    """About `n` bytes of one-letter words from the first line on, folded into 960-byte
    lines, one space between any two words, also across the folds."""
    line = b" ".join([b"w"] * 480)
    return b"\r\n ".join([line] * (n // len(line) + 1))


def long_folded_subject(n: int) -> bytes:
    """A long Subject that is almost a plain display string: only its last blank is not."""
    subject = b"Subject: " + _folded_words(n) + b" \r\n"
    return HEAD.replace(b"Subject: hostile\r\n", subject) + b"\r\nbody\r\n"


def long_message_id(n: int) -> bytes:
    """A Message-ID of about `n` bytes, folded (no real one is longer than a line)."""
    line = b".".join([b"w"] * 480)
    folded = b"<" + b"\r\n .".join([line] * (n // len(line) + 1)) + b"@example.org>"
    return HEAD.replace(b"<hostile@example.org>", folded) + b"\r\nbody\r\n"


def long_folded_names(n: int) -> bytes:
    """From and To with display names of about `n` bytes."""
    words = _folded_words(n)
    return (
        b"From: " + words + b" <sender@example.org>\r\n"
        b"To: " + words + b" <inbox@vault.test>\r\n"
        b"Subject: names\r\n\r\nbody\r\n"
    )


def encoded_words(n: int) -> bytes:
    """`n` RFC 2047 encoded-words in the Subject, in a display name and in a To list."""
    subject = b"Subject:" + b" =?utf-8?b?w4RwZmVs?=\r\n" * n
    name = b"From:" + b" =?iso-8859-1?q?J=F6rg?=\r\n" * n + b" <sender@example.org>\r\n"
    to = b"To:" + b"".join(b" =?utf-8?q?R=C3=BC?= <r%d@example.org>,\r\n" % i for i in range(n))
    return name + to + b" last@example.org\r\n" + subject + b"\r\nbody\r\n"


def huge_boundary(n: int) -> bytes:
    """A boundary parameter of `n` bytes, folded (a quoted string may span lines); no
    delimiter line can be that long, so no part is ever found."""
    chunk = b"x" * 900
    boundary = b"\r\n ".join([chunk] * (n // len(chunk) + 1))
    return (
        HEAD + b'Content-Type: multipart/mixed;\r\n boundary="' + boundary + b'"\r\n\r\n'
        b"--xxxx\r\n\r\ntext\r\n"
    )


def unclosed_boundary(n: int) -> bytes:
    """A multipart whose closing delimiter never comes; `n` lines that almost are one."""
    return (
        HEAD
        + b"Content-Type: multipart/mixed; boundary=u\r\n\r\n--u\r\n\r\n"
        + b"--u- no delimiter\r\n-- u\r\n" * n
    )


def qp_soft_breaks(n: int) -> bytes:
    """Quoted-printable of nothing but soft line breaks and truncated escapes."""
    return (
        HEAD
        + b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b"=\r\n=4\r\n=\r\n" * n
    )


def base64_garbage(n: int) -> bytes:
    return (
        HEAD
        + b"Content-Type: image/png; name=a.png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b"!!!*not base64===\x80\xff\r\nAAAA====AAAA\r\n" * n
    )


def mixed_line_endings(n: int) -> bytes:
    """Bare CR, bare LF and CRLF mixed, in the header and the body."""
    return b"Subject: endings\rX-A: b\nX-B: c\r\n\r\n" + b"a\rb\nc\r\n\n\r" * n + b"end\r\n"


def nul_and_8bit(n: int) -> bytes:
    return (
        b"From: J\xf6rg\x00 <sender@example.org>\r\nSubject: \xff\xfe\x00 8bit\r\n"
        b"Content-Type: text/plain; charset=\xe4\xf6\xfc\r\n\r\n" + b"\x00\xff\xfe body\r\n" * n
    )


# name -> (builder, n): n is the size the tests start from (they also build 2n and 4n)
CASES: dict[str, tuple[Callable[[int], bytes], int]] = {
    "nested-multipart": (nested_multipart, 2500),
    "nested-multipart-binary": (lambda n: nested_multipart(n, binary=True), 2500),
    "nested-message": (nested_message, 2500),
    "nested-message-binary": (lambda n: nested_message(n, binary=True), 2500),
    "many-parts": (many_parts, 25000),
    "many-fields": (many_fields, 25000),
    "many-recipients": (many_recipients, 10000),
    "long-folded-subject": (long_folded_subject, 500_000),
    "long-folded-names": (long_folded_names, 250_000),
    "long-message-id": (long_message_id, 100_000),
    "encoded-words": (encoded_words, 2500),
    "huge-boundary": (huge_boundary, 250_000),
    "unclosed-boundary": (unclosed_boundary, 25000),
    "qp-soft-breaks": (qp_soft_breaks, 50000),
    "base64-garbage": (base64_garbage, 25000),
    "mixed-line-endings": (mixed_line_endings, 50000),
    "nul-and-8bit": (nul_and_8bit, 25000),
}
