from __future__ import annotations

import sys

from encimap.auth.passwords import generate_password


class CommandError(Exception):
    """A failure the user can act on; printed as one line."""


def read_or_generate_password(what: str) -> tuple[str, bool]:
    """(password, generated): the first line of stdin when it is not a terminal, else new.

    A generated password is printed once by the caller and never stored in clear or logged.
    """
    if sys.stdin is not None and not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise CommandError(f"no {what} on standard input (first line is empty)")
        return line, False
    return generate_password(), True
