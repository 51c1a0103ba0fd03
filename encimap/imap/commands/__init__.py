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


@dataclass(frozen=True)
class Command:
    handler: Handler
    states: frozenset[State]
    # RFC 3501 7.4.1: no untagged EXPUNGE after FETCH, STORE or SEARCH (UID forms allow it).
    expunge_ok: bool = True


COMMANDS: dict[str, Command] = {}

_BASE = (
    "IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE NAMESPACE UIDPLUS MOVE UNSELECT CHILDREN "
    "LIST-EXTENDED SPECIAL-USE ESEARCH MULTIAPPEND STATUS=SIZE SORT SORT=DISPLAY ESORT "
    "THREAD=REFERENCES THREAD=ORDEREDSUBJECT COMPRESS=DEFLATE "
    "QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE LIST-STATUS BINARY CATENATE"
)


def command(
    *names: str, states: frozenset[State], expunge_ok: bool = True
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        for name in names:
            COMMANDS[name] = Command(handler, states, expunge_ok)
        return handler

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
    fetch,
    idle,
    mailbox,
    quota,
    search,
    sort,
    store,
    thread,
)
