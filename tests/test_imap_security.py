"""Refused logins, isolation between vaultboxes, and malformed input that must get BAD while
the session stays usable."""

from __future__ import annotations

import asyncio
import base64
import imaplib

import pytest

from encimap.metrics import REGISTRY
from tests.imap_support import (
    RawClient,
    encrypt_for,
    imap_config,
    login,
    make_box,
    plain_message,
    ports,
    running_imap,
    starttls_client,
    store,
)
from tests.support import make_vaultbox, run_cli, write_config_file


@pytest.fixture
def cfg(databases, tls_files):
    return imap_config(databases, tls_files, max_connections_per_user=2)


def _try_login(port, tls_ca, username, password) -> str:
    client = starttls_client(port, tls_ca)
    try:
        client.login(username, password)
    except imaplib.IMAP4.error as exc:
        return str(exc)
    finally:
        client.shutdown()
    return "OK"


async def test_refused_logins(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "guarded@example.test", tmp_path)
    smtp_only = await make_vaultbox(databases, "smtponly@example.test", kinds=("smtp",))
    revoked = await make_vaultbox(databases, "revoked@example.test")
    config_file = write_config_file(tmp_path / "c.toml", databases)
    assert (
        run_cli("credential", "revoke", revoked.username, config_file=config_file).returncode == 0
    )
    port, _ = ports(cfg)

    def client_side() -> dict[str, str]:
        results = {
            "wrong": _try_login(port, tls_ca, box.username, "not-the-password"),
            "revoked": _try_login(port, tls_ca, revoked.username, revoked.password),
            "smtp_only": _try_login(port, tls_ca, smtp_only.username, smtp_only.password),
            "right": _try_login(port, tls_ca, box.username, box.password),
        }
        plain = imaplib.IMAP4("127.0.0.1", port, timeout=10)
        caps = plain.capabilities
        try:
            plain.login(box.username, box.password)
            results["before_tls"] = "OK"
        except imaplib.IMAP4.error as exc:
            results["before_tls"] = str(exc)
        typ, data = plain._simple_command(
            "AUTHENTICATE",
            "PLAIN",
            base64.b64encode(f"\0{box.username}\0{box.password}".encode()).decode(),
        )
        results["authenticate_before_tls"] = f"{typ} {data}"
        plain.logout()
        results["caps"] = " ".join(caps)
        return results

    async with running_imap(cfg):
        results = await asyncio.to_thread(client_side)
    for case in ("wrong", "revoked", "smtp_only"):
        assert "AUTHENTICATIONFAILED" in results[case], (case, results[case])
    assert results["right"] == "OK"
    assert "PRIVACYREQUIRED" in results["before_tls"]
    assert "PRIVACYREQUIRED" in results["authenticate_before_tls"]
    assert "LOGINDISABLED" in results["caps"] and "STARTTLS" in results["caps"]


async def test_authenticate_plain_with_and_without_initial_response(
    databases, cfg, tls_ca, tmp_path
):
    box = await make_box(databases, "sasl@example.test", tmp_path)
    port, _ = ports(cfg)
    token = base64.b64encode(f"\0{box.username}\0{box.password}".encode())

    def client_side() -> tuple[str, str]:
        client = starttls_client(port, tls_ca)
        typ, _ = client.authenticate("PLAIN", lambda _challenge: base64.b64decode(token))
        client.logout()
        client = starttls_client(port, tls_ca)
        ir_typ, _ = client._simple_command("AUTHENTICATE", "PLAIN", token.decode())
        client.logout()
        return typ, ir_typ

    async with running_imap(cfg):
        assert await asyncio.to_thread(client_side) == ("OK", "OK")


async def test_connection_limit_per_user(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "limited@example.test", tmp_path)
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        clients = [await RawClient.connect(tls_port, tls_ca) for _ in range(3)]
        replies = [await c.command("a", f"LOGIN {box.username} {box.password}") for c in clients]
        assert [r[-1][:4] for r in replies] == [b"a OK", b"a OK", b"a NO"]
        assert b"[LIMIT]" in replies[2][-1]
        for client in clients:
            await client.close()


async def test_a_session_never_sees_another_vaultbox(databases, cfg, tls_ca, tmp_path):
    mine = await make_box(databases, "mine@example.test", tmp_path)
    theirs = await make_box(databases, "theirs@example.test", tmp_path)
    secret = encrypt_for(theirs, plain_message(99))
    for _ in range(3):
        await store(databases, theirs, secret)
    await store(databases, theirs, secret, mailbox="Sent")
    await store(databases, mine, encrypt_for(mine, plain_message(1)))
    conn = await databases.connect()
    try:
        their_mailbox_ids = [
            row["id"]
            for row in await conn.fetch(
                "SELECT id FROM mailboxes WHERE vaultbox_id = $1", theirs.id
            )
        ]
    finally:
        await conn.close()
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        raw = await RawClient.connect(tls_port, tls_ca)
        await raw.login(mine)
        seen = b""
        for command in (
            "SELECT INBOX",
            "UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[])",
            "FETCH 1:4 (BODY.PEEK[])",
            "UID FETCH 2:4 (BODY.PEEK[])",
            "UID COPY 1:* Sent",
            "UID SEARCH ALL",
            "STATUS Sent (MESSAGES)",
            *(f"SELECT {mailbox_id}" for mailbox_id in their_mailbox_ids),
            'SELECT "../theirs@example.test/INBOX"',
            'LIST "" *',
        ):
            seen += b"".join(await raw.command("t", command))
        assert secret not in seen
        assert b"Sent (MESSAGES 1)" in seen  # only the message it copied itself
        await raw.close()


MALFORMED = [
    b"a1 FETCH 1 (BODY[HEADER.FIELDS (FROM)",  # unbalanced parentheses
    b"a2 FETCH 1 (FLAGS",
    b"a3 FETCH 0:2 FLAGS",  # invalid sequence set
    b"a4 FETCH 1:x FLAGS",
    b"a5 FETCH 99 FLAGS",
    b"a6 SEARCH OR SEEN",
    b'a7 LOGIN "unterminated',
    b"a8 SELECT {5}\r\nINBOX extra",
    b"a9 FETCH 1 (NOSUCHITEM)",
    b"a10 STORE 1 +FLAGS (\\Recent)",
    b"a11 FETCH 1 BODY[1.MIME.X]",
    b"a12 NOSUCHCOMMAND",
    b"a13 FETCH 1 FLAGS \x00",
    b"a14 SEARCH CHARSET KOI8-R ALL",
    b"a15 SELECT",
    b"a16 UID FETCH 1:* (FLAGS) (NOSUCHMODIFIER 1)",
]


async def test_malformed_commands_get_bad_and_the_session_continues(
    databases, cfg, tls_ca, tmp_path
):
    box = await make_box(databases, "robust@example.test", tmp_path)
    await store(databases, box, encrypt_for(box, plain_message(1)))
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        raw = await RawClient.connect(tls_port, tls_ca)
        await raw.login(box)
        await raw.command("s", "SELECT INBOX")
        for line in MALFORMED:
            tag = line.split(b" ")[0].decode()
            if b"{5}" in line:
                head, rest = line.split(b"\r\n", 1)
                await raw.send(head + b"\r\n")
                assert (await raw.line()).startswith(b"+ ")
                await raw.send(rest + b"\r\n")
                reply = await raw.until(tag)
            else:
                reply = await raw.command(tag, line[len(tag) + 1 :])
            assert reply[-1].startswith(f"{tag} BAD".encode()), (line, reply)
            check = await raw.command("n", "NOOP")
            assert check[-1].startswith(b"n OK"), (line, check)
        # a huge synchronizing literal is refused before the client sends it
        await raw.send(b"big APPEND INBOX {999999999999}\r\n")
        reply = await raw.until("big")
        assert reply[-1].startswith(b"big BAD") and b"too large" in reply[-1]
        # an over-long command line
        await raw.send(b"long NOOP " + b"x" * (cfg.imap.max_line_length + 10) + b"\r\n")
        reply = await raw.until("long")
        assert reply[-1].startswith(b"long BAD")
        fetched = await raw.command("f", "FETCH 1 (UID)")
        assert fetched[0] == b"* 1 FETCH (UID 1)\r\n"
        await raw.close()


async def test_proxy_protocol_names_the_client(databases, tls_files, tls_ca, tmp_path):
    """Behind a balancer the PROXY header's address decides (here: a trusted network, so
    LOGIN works in clear); a STARTTLS-port connection without the header is dropped."""
    box = await make_box(databases, "proxied@example.test", tmp_path)
    cfg = imap_config(
        databases, tls_files, proxy_protocol=True, trusted_networks=["203.0.113.0/24"]
    )
    port, tls_port = ports(cfg)
    async with running_imap(cfg):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 143\r\n")
        raw = RawClient(reader, writer)
        raw.greeting = await raw.line()
        assert b"AUTH=PLAIN" in raw.greeting and b"LOGINDISABLED" not in raw.greeting
        await raw.login(box)
        await raw.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 143\r\n")
        raw = RawClient(reader, writer)
        assert b"LOGINDISABLED" in await raw.line()
        await raw.close()

        implicit = await RawClient.connect(tls_port, tls_ca)  # no header on implicit TLS
        await implicit.login(box)
        await implicit.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"a1 LOGIN x y\r\n")
        assert await asyncio.wait_for(reader.read(), 15) == b""
        writer.close()


async def test_open_sessions_gauge_follows_connections(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "counted@example.test", tmp_path)
    port, _ = ports(cfg)

    def open_sessions() -> float:
        return REGISTRY.get_sample_value("encimap_imap_sessions", {"state": "open"}) or 0.0

    async with running_imap(cfg):
        before = open_sessions()
        client = await asyncio.to_thread(login, port, tls_ca, box)
        assert open_sessions() == before + 1
        await asyncio.to_thread(client.logout)
        for _ in range(50):
            if open_sessions() == before:
                break
            await asyncio.sleep(0.05)
        assert open_sessions() == before


async def test_commands_pipelined_after_starttls_are_not_run(databases, cfg, tls_ca, tmp_path):
    """RFC 3501 6.2.1 / RFC 7817: a command sent in clear behind STARTTLS (an injection by
    someone on the path) must not run inside the TLS session; the server hangs up instead."""
    box = await make_box(databases, "injected@example.test", tmp_path)
    port, _ = ports(cfg)
    async with running_imap(cfg):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = RawClient(reader, writer)
        raw.greeting = await raw.line()
        await raw.send(b"a STARTTLS\r\nb LOGIN %s %s\r\n" % (box.username.encode(), b"x"))
        assert await raw.line() == b"* BYE Data after STARTTLS\r\n"
        assert await asyncio.wait_for(reader.read(), 10) == b""
        await raw.close()
