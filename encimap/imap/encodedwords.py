"""RFC 2047 encoded words in a header value, decoded as the email package decodes them
(`str(make_header(decode_header(value)))`), in time linear in the value.

The email package finds the words with a regex whose encoded text is `.*?` up to the next
`?=`: each `=?` not closed later on its line scanned to the end of the line, and it took
apart and joined the pieces with `list.pop(0)` and `bytes +=`, so a Subject of many
`=?x?q?a` cost its length once per word (56 KB: 2 s, 1 MB: many minutes) and one of many
encoded words cost the same through the joins. Here each place where an encoded word could
end is looked for once, and pieces are joined once.
"""

from __future__ import annotations

import binascii
import email.base64mime
import email.quoprimime
from email.errors import HeaderParseError
from email.header import make_header

_ENCODINGS = frozenset("qQbB")
Word = tuple[str, str | None, str | None]  # (text, encoding, charset); unencoded: None, None


def decoded(value: str) -> str:
    """The value with its encoded words decoded; HeaderParseError (bad base64), LookupError
    (unknown charset) and UnicodeError as the email package raises them."""
    return str(make_header(decode_header(value)))


def split(line: str) -> list[str]:
    """What the email package's `ecre.split(line)` gives: [text, charset, encoding, encoded
    text, text, ...]. A word is `=?charset?e?text?=`: the charset runs to the first `?`
    (which cannot be part of it), the text to the first `?=` after `?e?` on the same line."""
    parts: list[str] = []
    done = 0  # the end of the last word found
    at = 0  # where the next `=?` is looked for
    close = -1  # the first `?=` at or after the last start asked about (starts only grow)
    line_end = -1  # the same for a line feed (`.` stops there)
    while (opening := line.find("=?", at)) >= 0:
        mark = line.find("?", opening + 2)
        if mark < 0:  # a later `=?` would be a later `?`
            break
        start = mark + 3
        if line[mark + 1 : mark + 2] in _ENCODINGS and line[mark + 2 : mark + 3] == "?":
            if close < start:
                close = line.find("?=", start)
                if close < 0:  # no word can end after this start, nor after a later one
                    break
            if line_end < start:
                line_end = line.find("\n", start)
                if line_end < 0:
                    line_end = len(line)
            if close < line_end:
                parts += (line[done:opening], line[opening + 2 : mark], line[mark + 1])
                parts.append(line[start:close])
                done = at = close + 2
                continue
        at = opening + 1
    parts.append(line[done:])
    return parts


def decode_header(header: str) -> list[tuple[bytes | str, str | None]]:
    """What `email.header.decode_header(header)` gives for a str."""
    if len(split(header)) == 1:
        return [(header, None)]
    words: list[Word] = []
    for line in header.splitlines():
        parts = split(line)
        for index in range(0, len(parts), 4):
            text = parts[index].lstrip() if index == 0 else parts[index]
            if text:
                words.append((text, None, None))
            if index + 1 < len(parts):
                words.append((parts[index + 3], parts[index + 2].lower(), parts[index + 1].lower()))
    # white space between two encoded words goes (the email package's test, on the list as
    # it was before any goes)
    dropped = {
        n - 1
        for n in range(2, len(words))
        if words[n][1] and words[n - 2][1] and words[n - 1][0].isspace()
    }
    pieces: list[tuple[bytes, str | None]] = []
    for n, (text, encoding, charset) in enumerate(words):
        if n not in dropped:
            pieces.append((_decode_word(text, encoding), charset))
    collapsed: list[tuple[bytes | str, str | None]] = []
    run: list[bytes] = []
    run_charset: str | None = None
    for word, charset in pieces:
        if run and charset != run_charset:
            collapsed.append(((b" " if run_charset is None else b"").join(run), run_charset))
            run = []
        if not run:
            run_charset = charset
        run.append(word)
    collapsed.append(((b" " if run_charset is None else b"").join(run), run_charset))
    return collapsed


def _decode_word(text: str, encoding: str | None) -> bytes:
    if encoding is None:
        return text.encode("raw-unicode-escape")
    if encoding == "q":
        return email.quoprimime.header_decode(text).encode("raw-unicode-escape")
    if len(text) % 4:  # Postel's law, as the email package applies it: the missing padding
        text += "==="[: 4 - len(text) % 4]
    try:
        return email.base64mime.decode(text)
    except binascii.Error:
        raise HeaderParseError("Base64 decoding error") from None
