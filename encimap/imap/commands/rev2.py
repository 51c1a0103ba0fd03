"""IMAP4rev2 (RFC 9051) next to IMAP4rev1: both are advertised, and `ENABLE IMAP4rev2`
switches the session to rev2's semantics where the two differ (RFC 9051 2.3, appendix E).
Every command keeps its rev1 behaviour unless the session enabled rev2.

What changes in rev2 mode, and where it is decided (this module holds each rule):
- no `\\Recent`: the session claims no message as recent, so neither FLAGS nor any RECENT
  response carries it (`Selected(recent=False)`); SEARCH RECENT/NEW/OLD and STATUS RECENT
  are not in rev2's grammar and answer BAD;
- SEARCH answers with ESEARCH only (no RETURN is RETURN (ALL), RFC 9051 6.4.4);
- SELECT/EXAMINE: an untagged LIST for the mailbox, with OLDNAME when the name given is not
  the mailbox's canonical one (6.3.2), `OK [CLOSED]` when another mailbox was selected, no
  RECENT and no UNSEEN code;
- RENAME answers with an untagged LIST of the new name carrying OLDNAME (6.3.6), CREATE and
  DELETE do when the name they were given was normalized (6.3.4, 6.3.5);
- LIST names a parent that exists only as the path of a child `\\NonExistent` (which implies
  `\\Noselect`, 7.3.1) rather than rev1's `\\Noselect`;
- STATUS DELETED (6.3.11).

The rest of rev2 is offered in both modes: SEARCHRES (commands/searchres.py), NAMESPACE,
UNSELECT, MOVE, UIDPLUS, ESEARCH, LIST-EXTENDED, LIST-STATUS, SASL-IR, ENABLE, IDLE,
STATUS=SIZE, and non-synchronizing literals (LITERAL+, a superset of rev2's LITERAL-).
"""

from __future__ import annotations

import contextlib

from encimap.imap import names, wire
from encimap.imap.commands import enableable
from encimap.imap.parser import ParseError, RecentKey
from encimap.imap.session import Session, State
from encimap.store import search as keys
from encimap.store.mailboxes import DELIMITER, Mailbox, new_name

NAME = "IMAP4rev2"
STATUS_ITEMS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "HIGHESTMODSEQ")


def active(session: Session) -> bool:
    return NAME in session.enabled


@enableable(NAME)
def enable(session: Session) -> bool:
    """RFC 9051 6.3.1: before any mailbox is selected; later the rev1 view stays."""
    if session.state is not State.AUTHENTICATED:
        return False
    session.utf8_names = True
    return True


def wire_name(session: Session, name: str, *, quoted: bool = False) -> str:
    """A stored (modified UTF-7) mailbox name as the session's client reads it: itself for
    rev1, its UTF-8 text for rev2 (RFC 9051 5.1: a quoted string may hold UTF-8 there).
    `quoted`: never as an atom."""
    text = name
    if session.utf8_names:
        with contextlib.suppress(ValueError):  # one stored before names were checked stays
            text = names.decode(name)
    if session.utf8_names and not text.isascii():
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return wire.quoted_or_literal(text) if quoted else wire.astring(text)


def check_search_key(session: Session, key: object) -> None:
    """RECENT, NEW and OLD are not rev2 search keys (appendix E): BAD in rev2 mode."""
    if active(session) and keys.mentions(key, RecentKey):
        raise ParseError("RECENT, NEW and OLD are not IMAP4rev2 search keys")


def status_items(session: Session, rev1_items: tuple[str, ...]) -> tuple[str, ...]:
    return STATUS_ITEMS if active(session) else rev1_items


def placeholder_attribute(session: Session) -> str:
    """The attribute of a name that exists only as the path of a child mailbox."""
    return "\\NonExistent" if active(session) else "\\Noselect"


def list_line(session: Session, name: str, attributes: list[str], *, given: str = "") -> str:
    """An untagged LIST response (without "* "), with OLDNAME when `given` differs."""
    line = f'LIST ({" ".join(attributes)}) "{DELIMITER}" {wire_name(session, name)}'
    if given and given != name:
        old = wire_name(session, given)
        line += (
            f' ("OLDNAME" ({old if old.startswith(("{", chr(34))) else chr(34) + old + chr(34)}))'
        )
    return line


def closed(session: Session) -> None:
    """SELECT/EXAMINE closed the mailbox selected before (6.3.2; RFC 7162 3.2.11 once QRESYNC
    is enabled), whether or not the new one opens: the responses after this one are not about
    it any more."""
    if active(session) or "QRESYNC" in session.enabled:
        session.untagged("OK [CLOSED] Previous mailbox closed.")


def select_responses(session: Session, mailbox: Mailbox, given: str) -> None:
    """What rev2's SELECT/EXAMINE sends besides FLAGS, EXISTS and the UID codes."""
    attributes = [mailbox.special_use] if mailbox.special_use else []
    session.untagged(list_line(session, mailbox.name, attributes, given=given))


def renamed(session: Session, old: str, new: str) -> None:
    """RFC 9051 6.3.6: the new name, with the old one as OLDNAME."""
    if active(session):
        session.untagged(list_line(session, new_name(new), [], given=old))


def normalized(session: Session, given: str, name: str, *, deleted: bool) -> None:
    """CREATE/DELETE of a name the server normalized (INBOX's case, a trailing
    delimiter): the name acted on, with the one given as OLDNAME (6.3.4, 6.3.5)."""
    if active(session) and name != given:
        session.untagged(
            list_line(session, name, ["\\NonExistent"] if deleted else [], given=given)
        )
