"""SEARCHRES (RFC 5182): `SEARCH RETURN (SAVE)` keeps the matching messages for the session,
and "$" names them as a sequence set (FETCH, STORE, COPY, MOVE, SEARCH, their UID forms).
IMAP4rev2 requires it (RFC 9051 6.4.4.1). The saved result lives in the selected mailbox's
state (`Selected.saved`, UIDs): a new SELECT, EXAMINE, CLOSE or UNSELECT forgets it, an
expunged message leaves it, and before any SAVE "$" is the empty set."""

from __future__ import annotations

import re

from encimap.imap.selected import Selected

OPTION = "SAVE"
_SAVING = re.compile(rb"^\S+ (?:UID )?SEARCH RETURN \([^)]*\bSAVE\b", re.IGNORECASE)


def split(options: list[str]) -> tuple[list[str], bool]:
    """The return options without SAVE, and whether SAVE was among them."""
    rest = [option for option in options if option != OPTION]
    return rest, len(rest) != len(options)


def saving(command: bytes) -> bool:
    """Whether a SEARCH command (possibly too malformed to parse) asked for SAVE."""
    return _SAVING.match(command) is not None


def save(selected: Selected, uids: list[int], options: list[str]) -> None:
    """Keep the matches (ascending UIDs) as "$". With MIN and/or MAX but neither ALL nor
    COUNT, only those messages are kept (RFC 5182 2.4)."""
    if uids and options and not {"ALL", "COUNT"} & set(options):
        kept = {uids[0]} if "MIN" in options else set()
        if "MAX" in options:
            kept.add(uids[-1])
        uids = sorted(kept)
    selected.saved = list(uids)


def forget(selected: Selected | None) -> None:
    """A SEARCH that asked for SAVE and failed leaves "$" empty (RFC 5182 2.1)."""
    if selected is not None:
        selected.saved = []
