"""ENVELOPE and BODYSTRUCTURE of real-world messages equal Dovecot's, with CRLF line endings
as SMTP delivers them. Three sources, each skipped where it is missing:

- `cpython`: the messages CPython's email package tests itself with (Lib/test/test_email/data,
  where the Python installation ships its tests);
- `imaptest`: the mailboxes of Dovecot's imaptest (its scripted tests' mboxes, crafted to probe
  MIME parsers, and `stress.mbox`, real list mail), under ../shared/tools/imaptest;
- `mail-parser`: real spam, phishing and bounce messages from the mail-parser package's test
  data, copied into tests/data/mail-parser (origin and licence there).
"""

from __future__ import annotations

import re
import sysconfig
from pathlib import Path

import pytest

from tests import dovecot_support
from tests.imap_support import fetch_from_both, make_box, store
from tests.imaptest_support import IMAPTEST

CPYTHON = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"
MAIL_PARSER = Path(__file__).parent / "data" / "mail-parser"
ITEMS = ("ENVELOPE", "BODYSTRUCTURE", "BODY")
# Messages whose structure encimap still reads differently from Dovecot, and why. The only
# accepted differences; one that disappears fails the test, so the list cannot go stale.
KNOWN_DIFFERENCES: dict[str, str] = {}
_MBOX_SEPARATOR = re.compile(rb"(?m)^From [^\n]*\n")


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _cpython() -> dict[str, bytes]:
    found = {}
    for path in sorted(CPYTHON.glob("msg_*.txt")):
        data = _crlf(path.read_bytes())
        if data.startswith(b"From ") or not data.strip():
            continue  # mbox separators are the intake's business (test_delivery_mbox_import)
        found[path.name] = data
    return found


def _imaptest() -> dict[str, bytes]:
    found = {}
    paths = [*sorted((IMAPTEST / "tests").glob("*.mbox")), IMAPTEST / "stress.mbox"]
    for path in paths:
        if not path.is_file():
            continue
        pieces = _MBOX_SEPARATOR.split(path.read_bytes().replace(b"\r\n", b"\n"))
        messages = [piece for piece in pieces if piece.strip()]
        for number, message in enumerate(messages, 1):
            found[f"{path.name}#{number}"] = _crlf(message)
    return found


def _mail_parser() -> dict[str, bytes]:
    return {path.name: _crlf(path.read_bytes()) for path in sorted(MAIL_PARSER.glob("*.eml"))}


SOURCES = {"cpython": _cpython, "imaptest": _imaptest, "mail-parser": _mail_parser}
# Fewer messages than this means the source is not (completely) there.
EXPECTED_AT_LEAST = {"cpython": 40, "imaptest": 200, "mail-parser": 12}

pytestmark = pytest.mark.skipif(
    dovecot_support.available() is not None, reason=str(dovecot_support.available())
)


@pytest.mark.parametrize("source", list(SOURCES))
async def test_real_messages_match_dovecot(databases, tls_files, tls_ca, tmp_path, source):
    corpus = SOURCES[source]()
    if not corpus:
        pytest.skip(f"no {source} messages on this machine")
    names = list(corpus)
    box = await make_box(databases, f"corpus-{source}@example.test", tmp_path)
    for name in names:
        await store(databases, box, corpus[name])
    stored = [corpus[name] for name in names]
    theirs, ours = await fetch_from_both(databases, tls_files, tls_ca, box, stored, ITEMS)
    differing = {
        names[seq - 1] for (seq, item) in theirs if theirs[(seq, item)] != ours[(seq, item)]
    }
    differences = [
        f"{names[seq - 1]} {item}\n theirs: {theirs[(seq, item)]!r}\n ours:   {ours[(seq, item)]!r}"
        for (seq, item) in theirs
        if theirs[(seq, item)] != ours[(seq, item)] and names[seq - 1] not in KNOWN_DIFFERENCES
    ]
    assert len(names) >= EXPECTED_AT_LEAST[source], names  # the corpus is there
    assert not differences, f"{len(differences)} differences\n" + "\n".join(differences)
    fixed = set(KNOWN_DIFFERENCES) & set(names) - differing
    assert not fixed, f"equal to Dovecot now, remove from KNOWN_DIFFERENCES: {sorted(fixed)}"
