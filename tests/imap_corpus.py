"""Varied messages for comparing our ENVELOPE/BODYSTRUCTURE with Dovecot's."""

from __future__ import annotations

import base64
import os


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def smime_like(size: int = 10_000, *, seed: int = 0, subject: str = "[...]") -> bytes:
    """An S/MIME enveloped-data message of about `size` bytes (the body is random base64:
    structure is what matters here)."""
    payload = base64.encodebytes(os.urandom(size * 3 // 4)).decode().replace("\n", "\r\n")
    return (
        _crlf(
            f"From: Sender {seed} <sender{seed}@example.org>\n"
            f"To: vault@example.test\n"
            f"Subject: {subject}\n"
            f"Date: Tue, 2 Jan 2024 10:{seed % 60:02d}:00 +0100\n"
            f"Message-ID: <smime-{seed}@example.org>\n"
            "MIME-Version: 1.0\n"
            'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\n'
            "Content-Transfer-Encoding: base64\n"
            'Content-Disposition: attachment; filename="smime.p7m"\n'
            "Content-Description: S/MIME Encrypted Message\n"
            "\n"
        )
        + payload.encode()
    )


PLAIN = _crlf(
    "From: Alice Example <alice@example.org>\n"
    "To: Bob <bob@example.org>, carol@example.org\n"
    'Cc: "Dave, the third" <dave@example.org>\n'
    "Subject: Plain   text\twith  spaces\n"
    "Date: Mon, 1 Jan 2024 10:00:00 +0000\n"
    "Message-ID: <plain@example.org>\n"
    "In-Reply-To: <earlier@example.org>\n"
    "\n"
    "Hello Bob,\n\nthis is plain.\n"
)

ALTERNATIVE = _crlf(
    "From: alice@example.org\n"
    "To: bob@example.org\n"
    "Subject: Alternative\n"
    "Date: Mon, 1 Jan 2024 11:00:00 +0000\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/alternative; boundary="alt-1"\n'
    "\n"
    "This is a preamble.\n"
    "--alt-1\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "Gr=C3=BC=C3=9Fe\n"
    "--alt-1\n"
    'Content-Type: text/html; charset="utf-8"\n'
    "\n"
    "<p>Gruesse</p>\n"
    "--alt-1--\n"
    "epilogue\n"
)

NESTED = _crlf(
    'From: "Ünïcode Name" <u@example.org>\n'
    "To: =?utf-8?q?J=C3=B6rg?= <joerg@example.org>\n"
    "Subject: =?utf-8?b?w4RwZmVs?= and more\n"
    "Date: Wed, 3 Jan 2024 12:00:00 -0500\n"
    "Message-ID: <nested@example.org>\n"
    "MIME-Version: 1.0\n"
    "Content-Type: multipart/mixed; boundary=outer\n"
    "\n"
    "--outer\n"
    "Content-Type: multipart/alternative; boundary=inner\n"
    "\n"
    "--inner\n"
    "Content-Type: text/plain\n"
    "\n"
    "plain body\n"
    "--inner\n"
    "Content-Type: text/html\n"
    "\n"
    "<b>html</b>\n"
    "--inner--\n"
    "\n"
    "--outer\n"
    'Content-Type: application/pdf; name="report.pdf"\n'
    "Content-Transfer-Encoding: base64\n"
    'Content-Disposition: attachment; filename="report.pdf"\n'
    "Content-ID: <part3@example.org>\n"
    "Content-Language: en, de\n"
    "\n"
    "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSL0ZpbHRlci9GbGF0ZURlY29kZT4+\n"
    "--outer\n"
    "Content-Type: message/rfc822\n"
    "\n"
    "From: inner@example.org\n"
    "To: someone@example.org\n"
    "Subject: forwarded\n"
    "Date: Thu, 4 Jan 2024 08:00:00 +0000\n"
    "\n"
    "inner body\n"
    "--outer--\n"
)

NO_DATE_GROUPS = _crlf(
    "From: Group Sender <gs@example.org>\n"
    "To: undisclosed-recipients:;\n"
    'Cc: Friends: anna@example.org, "Ben B" <ben@example.org>;, last@example.org\n'
    "Reply-To: replies@example.org (Reply Desk)\n"
    "Subject: no date here\n"
    "\n"
    "body without date\n"
)

UTF8_HEADERS = _crlf(
    "From: Jörg Müller <joerg@example.org>\n"
    "To: 佐藤 <sato@example.jp>\n"
    "Subject: Grüße aus Köln ☕\n"
    "Date: Fri, 5 Jan 2024 09:30:00 +0100\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n"
    "MIME-Version: 1.0\n"
    "\n"
    "Grüße\n"
)

RFC2231 = _crlf(
    "From: a@example.org\n"
    "To: b@example.org\n"
    "Subject: params\n"
    "Date: Sat, 6 Jan 2024 09:30:00 +0000\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="b1"\n'
    "\n"
    "--b1\n"
    "Content-Type: text/plain; charset=us-ascii\n"
    "\n"
    "see attachment\n"
    "--b1\n"
    "Content-Type: application/octet-stream;\n"
    '  name*0="long"; name*1="name.bin"\n'
    "Content-Disposition: attachment;\n"
    "  filename*=utf-8''%C3%A4rger.bin\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "AAECAwQ=\n"
    "--b1--\n"
)

MISSING_PARTS = _crlf(
    "From: <bare@example.org>\n"
    'To: nodomain, "Quoted \\"Name\\"" <q@example.org>\n'
    "Sender: sender@example.org\n"
    "Subject:\n"
    "Message-ID: <x@y>\n"
    "\n"
    "x\n"
)

SMIME = smime_like(4000, seed=7)

# Header shapes real mail has (from other projects' test data): raw Latin-1 display names,
# repeated address fields, empty list elements, obs-phrase, comments inside addresses, a
# Date with leading whitespace, invalid addresses.
ODD_HEADERS = (
    b"From: J\xf6rg M\xfcller <joerg@example.org>\r\n"
    b"To: , a@example.org, b@example.org\r\n"
    b"To: second-to@example.org\r\n"
    b"Cc: Joe Q. Public <john.q.public@example.com>\r\n"
    b"Cc: Mary Smith <@node.test:mary@example.net>, , jdoe@test  . example\r\n"
    b"Bcc: <user-from (comment)@ (comment) domain.org>, not an address, @nolocal\r\n"
    b'Reply-To: "Giant; \\"Big\\" Box" <sysservices@example.net>\r\n'
    b"Subject: odd headers\r\n"
    b"Date:   Mon, 25 Mar 2007 23:30:00 -0500\r\n"
    b"Message-ID: <odd@example.org>\r\n"
    b"\r\n"
    b"body\r\n"
)

# Fields folded over several lines, as real mail has them (mail-parser's mail_test_6): a
# Subject that begins on a continuation line, an In-Reply-To whose first line is empty.
FOLDED_HEADERS = (
    b"From: a@example.org\r\n"
    b"To:\r\n b@example.org\r\n"
    b"Subject:\r\n =?UTF-8?B?0JHRi9GB0YLRgNC1?=\r\n =?UTF-8?B?0LvQvtGC0L4h?=\r\n"
    b"Date: Sat, 15 Jul 2017 12:18:41 +0300 (MSK)\r\n"
    b"In-Reply-To:\r\n <earlier@example.org>\r\n"
    b"Message-ID:\r\n\t<folded@example.org>\r\n"
    b"Content-Description:\r\n  two lines\r\n"
    b"\r\n"
    b"body\r\n"
)

# Content-* fields in a header that is not MIME (no Content-Type, no MIME-Version), at the
# top and in a forwarded message: Dovecot reads none of them.
NOT_MIME = _crlf(
    "From: a@example.org\n"
    "Subject: not MIME\n"
    "Content-Description: a description\n"
    "Content-ID: <id@example.org>\n"
    "Content-Disposition: inline\n"
    "Content-Language: en\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "body\n"
)

# A bare CR inside header values (not a line break): Dovecot serves it as a blank in
# display strings and plain values, and keeps it in a quoted parameter.
BARE_CR = (
    b"From: a@example.org\r\nSubject: endings\rX-A: b\r\nMessage-ID: <a\rb@example.org>\r\n"
    b"In-Reply-To: <c\rd@example.org>\r\nDate: Mon, 1 Jan 2024\r10:00:00 +0000\r\n"
    b"To: Na\rme <t@example.org>\r\nContent-Description: de\rsc\r\n"
    b'Content-Type: text/plain; name="a\rb"\r\n\r\nx\r\n'
)

# Boundaries reused inside and boundaries that are prefixes of one another: a delimiter line
# belongs to the longest open boundary it starts with, of equal ones the innermost (Dovecot).
SHARED_BOUNDARIES = _crlf(
    "From: a@example.org\n"
    "Subject: shared boundaries\n"
    "MIME-Version: 1.0\n"
    "Content-Type: multipart/mixed; boundary=b1\n"
    "\n"
    "--b1\n"
    "Content-Type: multipart/alternative; boundary=b1\n"
    "\n"
    "--b1\n"
    "Content-Type: text/plain\n"
    "\n"
    "inner plain\n"
    "--b1\n"
    "Content-Type: text/html\n"
    "\n"
    "<p>inner html</p>\n"
    "--b1--\n"
    "--b1\n"
    "Content-Type: multipart/mixed; boundary=b10\n"
    "\n"
    "--b10\n"
    "Content-Type: application/octet-stream\n"
    "\n"
    "AAAA\n"
    "--b10\n"
    "\n"
    "default part\n"
    "--b10--\n"
    "--b1\n"
    "Content-Type: message/rfc822\n"
    "\n"
    "From: inner@example.org\n"
    "Content-Type: multipart/mixed; boundary=b\n"
    "\n"
    "--b\n"
    "\n"
    "cut short by the outer boundary\n"
    "--b1--\n"
    "epilogue\n"
)

# Content-Language with a comment, read by an RFC 822 tokenizer as Dovecot does.
COMMENTED_LANGUAGE = _crlf(
    "From: a@example.org\nMIME-Version: 1.0\nContent-Type: text/plain\n"
    "Content-Language: en-US, (the old one) de\nContent-Location: http://example.org/x\n"
    "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n\nx\n"
)

# An empty boundary is a boundary: `--` alone is its delimiter line, `----` the closing one.
EMPTY_BOUNDARY = _crlf(
    "From: a@example.org\nMIME-Version: 1.0\n"
    'Content-Type: multipart/alternative; boundary=""\n\n--\n\nx\n----\n'
)

# Quoted strings that are never closed: the address is invalid as a whole, the parameter is
# dropped (Dovecot).
UNTERMINATED_QUOTES = _crlf(
    'From: "unterminated name <a@example.org>\nTo: x@example.org, "open\n'
    'Cc: "a\\"b <c@example.org>\nSubject: quotes\nMIME-Version: 1.0\n'
    'Content-Type: text/plain; charset=utf-8; name="unterminated\n\nx\n'
)

# Half a media type: a bare type keeps it with an empty subtype; `text/`, `/plain` and a bare
# type with parameters are none at all ("" "" without parameters), as Dovecot serves them.
HALF_TYPES = _crlf(
    "From: a@example.org\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=h\n\n"
    "--h\nContent-Type: text/; charset=utf-8\n\nx\n"
    "--h\nContent-Type: /plain\n\ny\n"
    "--h\nContent-Type: text\n\nz\n"
    "--h\nContent-Type: application\n\nz\n"
    "--h\nContent-Type: text; charset=utf-8\n\nz\n--h--\n"
)

# What mailbox-import tools send over LMTP: the message still begins with its mbox line.
MBOX_FROM_LINE = b"From sender@example.org Mon Jan  1 10:00:00 2024\r\n" + PLAIN

CORPUS: dict[str, bytes] = {
    "plain": PLAIN,
    "alternative": ALTERNATIVE,
    "nested": NESTED,
    "no_date_groups": NO_DATE_GROUPS,
    "utf8_headers": UTF8_HEADERS,
    "rfc2231": RFC2231,
    "missing_parts": MISSING_PARTS,
    "smime": SMIME,
    "odd_headers": ODD_HEADERS,
    "folded_headers": FOLDED_HEADERS,
    "not_mime": NOT_MIME,
    "bare_cr": BARE_CR,
    "shared_boundaries": SHARED_BOUNDARIES,
    "commented_language": COMMENTED_LANGUAGE,
    "empty_boundary": EMPTY_BOUNDARY,
    "unterminated_quotes": UNTERMINATED_QUOTES,
    "half_types": HALF_TYPES,
    "mbox_from_line": MBOX_FROM_LINE,
}
