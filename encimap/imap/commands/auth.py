"""Any-state and login commands: CAPABILITY, NOOP, LOGOUT, ID, ENABLE, STARTTLS, LOGIN,
AUTHENTICATE PLAIN (RFC 4959 SASL-IR)."""

from __future__ import annotations

import asyncio
import binascii

from encimap.auth import AuthFailed, AuthUnavailable
from encimap.imap.commands import (
    ANY,
    AUTHENTICATED,
    ENABLERS,
    NOT_AUTHENTICATED,
    capabilities,
    command,
    never_writes,
)
from encimap.imap.parser import ParseError, Reader
from encimap.imap.session import AlreadyReplied, Disconnect, Session, State, bad, no


@command("CAPABILITY", states=ANY, writes=never_writes)
async def capability(session: Session, _tag: str, reader: Reader) -> str:
    reader.end()
    session.untagged(f"CAPABILITY {capabilities(session)}")
    return "OK Capability completed."


@command("NOOP", "CHECK", states=ANY, writes=never_writes)
async def noop(session: Session, _tag: str, reader: Reader) -> str:
    reader.end()
    return "OK NOOP completed."


@command("LOGOUT", states=ANY)
async def logout(session: Session, _tag: str, reader: Reader) -> str:
    reader.end()
    if session.selected is not None:  # nothing may follow the BYE but the tagged OK
        session.selected.close()
        session.selected = None
    session.untagged("BYE Logging out")
    session.state = State.LOGOUT
    return "OK Logout completed."


@command("ID", states=ANY, writes=never_writes)
async def identify(session: Session, _tag: str, reader: Reader) -> str:
    """RFC 2971: accept the client's fields (unused), say who we are."""
    reader.sp()
    if not reader.accept(b"NIL"):
        reader.expect(b"(")
        count = 0
        while reader.peek() != 0x29:
            if count:
                reader.sp()
            reader.string()
            reader.sp()
            if not reader.accept(b"NIL"):
                reader.string()
            count += 1
            if count > 30:
                raise ParseError("too many ID fields")
        reader.pos += 1
    reader.end()
    session.untagged('ID ("name" "encimap")')
    return "OK ID completed."


@command("ENABLE", states=AUTHENTICATED)
async def enable(session: Session, _tag: str, reader: Reader) -> str:
    """RFC 5161: ENABLED lists what this command turned on (unknown names are ignored, as
    are names already enabled)."""
    reader.sp()
    names = [reader.atom()]
    while not reader.at_end():
        reader.sp()
        names.append(reader.atom())
    turned_on = []
    for word in names:
        name, enabler = ENABLERS.get(word.upper(), (word, None))
        if enabler is not None and name not in session.enabled and enabler(session):
            session.enabled.add(name)
            turned_on.append(name)
    session.untagged(" ".join(["ENABLED", *turned_on]))
    return "OK ENABLE completed."


@command("STARTTLS", states=NOT_AUTHENTICATED)
async def starttls(session: Session, tag: str, reader: Reader) -> str:
    reader.end()
    if session.tls:
        raise bad("TLS is already active")
    # RFC 3501 6.2.1 / RFC 7817: anything the client pipelined after STARTTLS arrived in clear
    # and must not be executed as if it came over TLS.
    if session.reader._buffer:
        raise Disconnect("BYE Data after STARTTLS")
    session.send(f"{tag} OK Begin TLS negotiation now.\r\n".encode())
    await session.flush()
    try:
        await session.writer.start_tls(session.server.tls_context())
    except (OSError, ConnectionError) as exc:
        raise Disconnect() from exc
    session.tls = True
    raise AlreadyReplied


@command("LOGIN", states=NOT_AUTHENTICATED)
async def login(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    username = reader.text_astring()
    reader.sp()
    password = reader.text_astring()
    reader.end()
    return await _login(session, username, password, "LOGIN")


@command("AUTHENTICATE", states=NOT_AUTHENTICATED)
async def authenticate(session: Session, _tag: str, reader: Reader) -> str:
    reader.sp()
    mechanism = reader.atom().upper()
    initial = None
    if not reader.at_end():
        reader.sp()
        initial = reader.atom() if reader.peek() != 0x3D else "="
        if initial == "=":
            reader.pos += 1
            initial = ""
    reader.end()
    if mechanism != "PLAIN":
        raise no(f"Unsupported authentication mechanism {mechanism[:20]}")
    if not session.server.login_allowed(session):
        raise no("[PRIVACYREQUIRED] Authentication disallowed before STARTTLS")
    if initial is None:
        session.send(b"+ \r\n")
        await session.flush()
        initial = (await session.read_line()).decode("ascii", "replace").strip()
        if initial == "*":
            raise bad("Authentication cancelled")
    try:
        decoded = binascii.a2b_base64(initial.encode(), strict_mode=True)
        authzid, authcid, password = decoded.decode("utf-8").split("\x00")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad("Invalid SASL PLAIN response") from None
    if authzid and authzid != authcid:
        raise no("[AUTHORIZATIONFAILED] Proxy authorization is not supported")
    return await _login(session, authcid, password, "PLAIN")


async def _login(session: Session, username: str, password: str, method: str) -> str:
    server = session.server
    if not server.login_allowed(session):
        raise no("[PRIVACYREQUIRED] Plaintext authentication disallowed before STARTTLS")
    began = asyncio.get_running_loop().time()
    try:
        principal = await server.engine.authenticate(
            username,
            password,
            service="imap",
            client_ip=session.client_ip,
            secured=session.tls,
            method=method,
        )
    except AuthFailed:
        raise no("[AUTHENTICATIONFAILED] Authentication failed.") from None
    except AuthUnavailable:
        raise no("[UNAVAILABLE] Temporary authentication failure.") from None
    if principal.kind != "vaultbox_imap" or principal.vaultbox_id is None:
        raise no("[AUTHENTICATIONFAILED] Authentication failed.")
    if not server.session_started(session, principal, since=began):
        raise no("[LIMIT] Too many connections for this user")
    session.principal = principal
    session.state = State.AUTHENTICATED
    return f"OK [CAPABILITY {capabilities(session)}] Logged in"
