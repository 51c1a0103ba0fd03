"""Command registry: each handler module registers its commands with `@command`.

A handler gets the session, the tag and a parser positioned after the command name, and returns
the text of its tagged OK (or raises `session.Reply` for NO/BAD).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from encimap.imap.parser import Reader
from encimap.imap.session import Session, State

Handler = Callable[[Session, str, Reader], Awaitable[str]]

ANY = frozenset(State) - {State.LOGOUT}
NOT_AUTHENTICATED = frozenset({State.NOT_AUTHENTICATED})
AUTHENTICATED = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})


def _may_write(_command: bytes) -> bool:
    return True


def never_writes(_command: bytes) -> bool:
    return False


@dataclass(frozen=True)
class Command:
    handler: Handler
    states: frozenset[State]
    # RFC 3501 7.4.1: no untagged EXPUNGE after FETCH, STORE or SEARCH (UID forms allow it).
    expunge_ok: bool = True
    # Whether this command (its whole line) may change the mailbox. After one that may, the
    # session's report of other sessions' changes uses no read begun before the change
    # (Session.after_command); with QRESYNC it also starts the round trip that gathers them
    # only after its work, not when it arrives (Session._early_barrier).
    writes: Callable[[bytes], bool] = _may_write


COMMANDS: dict[str, Command] = {}
# ENABLE (RFC 5161): upper-case name -> (name as announced, a function that turns the
# extension on for the session and says whether it did)
ENABLERS: dict[str, tuple[str, Callable[[Session], bool]]] = {}

_BASE = (
    "IMAP4rev1 IMAP4rev2 SASL-IR LITERAL+ ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT CHILDREN "
    "LIST-EXTENDED SPECIAL-USE ESEARCH MULTIAPPEND STATUS=SIZE SORT SORT=DISPLAY ESORT "
    "CONTEXT=SEARCH CONTEXT=SORT "
    "THREAD=REFERENCES THREAD=ORDEREDSUBJECT COMPRESS=DEFLATE "
    "QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE LIST-STATUS SEARCHRES NOTIFY BINARY CATENATE "
    "CONDSTORE QRESYNC"
)


def command(
    *names: str,
    states: frozenset[State],
    expunge_ok: bool = True,
    writes: Callable[[bytes], bool] = _may_write,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        for name in names:
            COMMANDS[name] = Command(handler, states, expunge_ok, writes)
        return handler

    return register


def enableable(name: str) -> Callable[[Callable[[Session], bool]], Callable[[Session], bool]]:
    """Register what `ENABLE name` does (a module per extension, as for commands)."""

    def register(enabler: Callable[[Session], bool]) -> Callable[[Session], bool]:
        ENABLERS[name.upper()] = (name, enabler)
        return enabler

    return register


def capabilities(session: Session) -> str:
    # RFC 7889: the largest message APPEND takes (the literal limit)
    base = f"{_BASE} APPENDLIMIT={session.config.max_literal_size}"
    if session.state is not State.NOT_AUTHENTICATED:
        return base
    words = [base]
    if not session.tls:
        words.append("STARTTLS")
    if session.server.login_allowed(session):
        words.append("AUTH=PLAIN")
    else:
        words.append("LOGINDISABLED")
    return " ".join(words)


# Register every handler module (imported for their @command side effect).
from encimap.imap.commands import (  # noqa: E402, F401
    append,
    auth,
    binary,
    compress,
    condstore,
    context,
    fetch,
    idle,
    mailbox,
    notify,
    quota,
    rev2,
    search,
    sort,
    store,
    thread,
)
