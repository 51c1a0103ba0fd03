"""Dovecot's imaptest (`../shared/tools/imaptest` beside the repository, or IMAPTEST_DIR):
where it is, and reading its stress output. Used by tests/test_imap_imaptest.py and by
`python -m bench.imap --stress`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.support import REPO

IMAPTEST = Path(os.environ.get("IMAPTEST_DIR", REPO.parent / "shared" / "tools" / "imaptest"))
LIBDOVECOT = Path("/usr/lib/dovecot/libdovecot.so.0")


def available() -> str | None:
    """None when imaptest can run here, else why not."""
    if not IMAPTEST.is_dir() or not LIBDOVECOT.exists():
        return f"imaptest needs {IMAPTEST} and {LIBDOVECOT} (Debian dovecot-core)"
    return None


def _imaptest(port: int, user: str, password: str, *settings: str) -> list[str]:
    """imaptest against 127.0.0.1:`port` as `user`, with `settings` (key=value)."""
    host = ("host=127.0.0.1", f"port={port}", f"user={user}", f"pass={password}")
    return [str(IMAPTEST / "imaptest"), *host, *settings]


def stress_command(port: int, user: str, password: str, *extra: str) -> list[str]:
    return _imaptest(port, user, password, f"mbox={IMAPTEST / 'stress.mbox'}", *extra)


def errors(output: str) -> list[str]:
    """imaptest's reports of a server reply that contradicts the state it tracks."""
    return [
        line
        for line in output.splitlines()
        if re.match(r"^(Error|Fatal):", line) and not line.startswith("Error: Raw backtrace")
    ]


def panicked(output: str) -> bool:
    """imaptest hit one of its own assertions (its checkpoint mode does so now and then
    against Dovecot too: client_update_plan, array_idx_modifiable_i)."""
    return any(line.startswith("Panic:") for line in output.splitlines())


def _table(output: str, after: str | None, row: str) -> dict[str, float]:
    lines = output.splitlines()
    if after is not None:
        if after not in lines:
            return {}
        lines = lines[lines.index(after) + 1 :]
    names = next((line.split() for line in lines if line.startswith("Logi")), [])
    values = next((line for line in lines if re.fullmatch(row, line)), None)
    if values is None:
        return {}
    return dict(zip(names, map(float, values.split()[: len(names)]), strict=False))


def totals(output: str) -> dict[str, float]:
    """The command counts of the final "Totals:" table, by column name (Logi, Sele, ...)."""
    return _table(output, "Totals:", r"[\d ]+")


def connected(output: str) -> float:
    """How many of its clients imaptest had connected, on average over its progress lines
    (each ends "connected/ clients"); the others were connecting or logging out."""
    counts = [int(m[1]) for m in re.finditer(r"^[\d ]+ (\d+)/ *\d+$", output, re.M)]
    return sum(counts) / len(counts) if counts else float("nan")


def latencies(output: str) -> dict[str, float]:
    """Average milliseconds per command over the run, by column name ("ms/cmd avg" row)."""
    return _table(output, None, r"[\d ]+ms/cmd avg")


def script_command(port: int, user: str, password: str, script: Path) -> list[str]:
    """imaptest running one scripted test (its mailbox files are looked up beside it)."""
    return _imaptest(port, user, password, f"test={script}")


def script_passed(output: str, errors_text: str) -> bool:
    """Whether a scripted run's every command got the reply the script expects."""
    return "1 test groups: 0 failed" in output and "*** Test" not in errors_text


_BLOCK = re.compile(rb"\{\{\{\n(.*?)\n\}\}\}", re.DOTALL)


def with_literals(script: bytes, replacements: dict[bytes, bytes]) -> bytes:
    """`script` with the `{{{ ... }}}` literals whose text is a key replaced by its value
    (texts as written in scripts: LF line ends, which imaptest sends as CRLF). Every key
    must occur."""
    unused = set(replacements)

    def replace(match: re.Match[bytes]) -> bytes:
        text = match[1]
        if text not in replacements:
            return match[0]
        unused.discard(text)
        return b"{{{\n" + replacements[text] + b"\n}}}"

    changed = _BLOCK.sub(replace, script)
    assert not unused, f"literals not in the script: {unused!r}"
    return changed
