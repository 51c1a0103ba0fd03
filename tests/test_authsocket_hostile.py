"""The auth socket against a peer that misbehaves: exchanges it abandons (as Postfix does when
its SMTP client sends `*`), CONT for exchanges that are gone, a peer that never reads, and
fields that could be echoed back. Real sockets, real PostgreSQL, the real Postfix."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import smtplib
import socket
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from encimap import logs
from encimap.authsocket import codec
from encimap.authsocket.service import start
from encimap.pgcluster import free_port
from encimap.service import Runtime
from tests.postfix_support import PrivatePostfix, reachable_dir, skip_reason
from tests.service_support import running_service
from tests.support import Databases, make_config, make_vaultbox
from tests.test_authsocket import AUTH_PARAMS, Client, plain, socket_config

pytestmark = pytest.mark.timeout(120)
ABANDONED = codec.MAX_LINE  # far more exchanges than any limit per connection


@pytest.fixture(scope="module")
def box(databases: Databases):
    return asyncio.run(make_vaultbox(databases, "hostile@vault.test", password="hostile-pass"))


async def test_abandoned_exchanges_never_end_the_connection(
    databases: Databases, tmp_path: Path, box
) -> None:
    async with running_service(socket_config(databases, tmp_path), "authsocket"):
        client = await Client.connect(tmp_path / "auth")
        try:
            await client.handshake()
            for request_id in range(1, 301):  # each waits for a CONT that never comes
                client.send("AUTH", str(request_id), "LOGIN", *AUTH_PARAMS)
                assert await client.line() == ["CONT", str(request_id), codec.LOGIN_USERNAME_PROMPT]
            client.send("CONT", "1", base64.b64encode(box.username.encode()).decode())
            assert await client.line() == ["FAIL", "1", f"reason={codec.GENERIC_FAILURE}"]
            client.send("CONT", "999", "AAAA")  # never begun
            assert await client.line() == ["FAIL", "999", f"reason={codec.GENERIC_FAILURE}"]
            client.send("CONT", "300", base64.b64encode(box.username.encode()).decode())
            assert await client.line() == ["CONT", "300", codec.LOGIN_PASSWORD_PROMPT]
            client.send("CONT", "300", base64.b64encode(b"hostile-pass").decode())
            assert await client.line() == ["OK", "300", f"user={box.username}"]
            client.send(
                "AUTH", "301", "PLAIN", *AUTH_PARAMS, f"resp={plain(box.username, 'hostile-pass')}"
            )
            assert await client.line() == ["OK", "301", f"user={box.username}"]
        finally:
            await client.close()


@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
async def test_postfix_clients_that_abort_do_not_break_later_logins(
    databases: Databases, box
) -> None:
    """One smtpd process keeps its auth connection for its whole life and never says that its
    client gave up with `*`: those exchanges must not pile up into a 454 for a later login."""
    socket_dir = reachable_dir("encimap-auth-")
    async with running_service(socket_config(databases, socket_dir), "authsocket"):
        postfix = PrivatePostfix(
            {
                "smtpd_sasl_auth_enable": "yes",
                "smtpd_sasl_type": "dovecot",
                "smtpd_sasl_path": str(socket_dir / "auth"),
                # one session may abort as often as it likes, without Postfix's error pauses
                "smtpd_soft_error_limit": "100000",
                "smtpd_hard_error_limit": "100000",
                "smtpd_error_sleep_time": "0",
            }
        )
        await asyncio.to_thread(postfix.start)
        try:

            def session() -> list[tuple[int, bytes]]:
                with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
                    client.ehlo()
                    aborted = []
                    for _ in range(200):
                        client.send(b"AUTH LOGIN\r\n")
                        assert client.getreply()[0] == 334
                        client.send(b"*\r\n")
                        aborted.append(client.getreply())
                    blob = base64.b64encode(f"\0{box.username}\0hostile-pass".encode())
                    return [*aborted, client.docmd("AUTH", "PLAIN " + blob.decode())]

            replies = await asyncio.to_thread(session)
        finally:
            await asyncio.to_thread(postfix.stop)
            postfix.cleanup()
            shutil.rmtree(socket_dir)
    assert {code for code, _ in replies[:-1]} == {501}, postfix.log()
    assert replies[-1] == (235, b"2.7.0 Authentication successful"), postfix.log()


async def test_a_peer_that_never_reads_is_not_buffered_for(databases: Databases, tmp_path) -> None:
    """Replies to a peer that stops reading stay bounded: the socket stops reading it too."""
    cfg = socket_config(databases, tmp_path)
    async with AsyncExitStack() as stack:
        service = await start(Runtime(cfg, stack))
        try:
            peer = socket.socket(socket.AF_UNIX)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            peer.connect(str(tmp_path / "auth"))
            # Each line is answered at once (a CONT prompt) and abandoned.
            lines = b"VERSION\t1\t2\n" + b"".join(
                f"AUTH\t{i}\tLOGIN\tservice=smtp\n".encode() for i in range(1, 200_001)
            )

            def send_all() -> int:
                """Bytes the socket took before it stopped taking more (or all of them)."""
                peer.settimeout(3)
                sent = 0
                try:
                    while sent < len(lines):
                        sent += peer.send(lines[sent : sent + 65536])
                except TimeoutError:
                    pass
                return sent

            sent = await asyncio.to_thread(send_all)
            [connection] = service.connections
            buffered = connection.writer.transport.get_write_buffer_size()
            peer.close()
        finally:
            await service.close()
            await service.drain(2.0)
    assert buffered <= 256 * 1024, buffered
    assert sent < len(lines)


async def test_malformed_requests_are_logged_with_their_reason_and_user(
    databases: Databases, tmp_path: Path, box, capsys
) -> None:
    """One line per decision, naming the login where the request certainly held one; fields
    a username could inject never reach the peer or the log."""
    injected = "x\tuser=root\nOK\t7"
    requests = [
        ("CRAM-MD5", ()),
        ("PLAIN", (f"resp={plain(box.username, 'hostile-pass', authzid='root')}",)),
        ("PLAIN", ("resp=!!!",)),
        ("LOGIN", ("resp=" + base64.b64encode(injected.encode()).decode(),)),
    ]
    logs.configure("info", "json")
    try:
        async with running_service(socket_config(databases, tmp_path), "authsocket"):
            client = await Client.connect(tmp_path / "auth")
            try:
                await client.handshake()
                answers = []
                for request_id, (mechanism, params) in enumerate(requests, 1):
                    client.send("AUTH", str(request_id), mechanism, *AUTH_PARAMS, *params)
                    answers.append(await client.line())
                client.send("CONT", "4", base64.b64encode(b"hostile-pass").decode())
                answers.append(await client.line())
            finally:
                await client.close()
    finally:
        logs.configure("warning", "console")
    failed = [f"FAIL\t{i}\treason={codec.GENERIC_FAILURE}".split("\t") for i in (1, 2, 3, 4)]
    assert answers == [*failed[:3], ["CONT", "4", codec.LOGIN_PASSWORD_PROMPT], failed[3]]
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    decisions = [
        (e["event"].split(",")[:2], e.get("reason"))
        for e in events
        if e["event"].startswith("auth failed:")
    ]
    assert decisions == [
        (["auth failed: user=<>", " method=CRAM-MD5"], "unknown mechanism"),
        (
            [f"auth failed: user=<{box.username}>", " method=PLAIN"],
            "authorization identity differs",
        ),
        (["auth failed: user=<>", " method=PLAIN"], "invalid base64"),
        (["auth failed: user=<x?user?root?OK?7>", " method=LOGIN"], "unknown user"),
    ]


@pytest.mark.parametrize(
    "first_lines",
    [
        # no VERSION first: Dovecot drops such a client too
        [["AUTH", "1", "PLAIN", *AUTH_PARAMS, "resp=" + plain("sock-mb", "mb-pass")]],
        [["CPID", "1"], ["AUTH", "1", "PLAIN", *AUTH_PARAMS]],
        # request ids are ASCII decimal numbers below 2**32, as Postfix sends them
        [["VERSION", "1", "2"], ["AUTH", "\u0661", "PLAIN", *AUTH_PARAMS]],
        [["VERSION", "1", "2"], ["AUTH", "4294967296", "PLAIN", *AUTH_PARAMS]],
    ],
)
async def test_what_no_auth_client_sends_ends_the_connection_unanswered(
    databases: Databases, tmp_path: Path, first_lines: list[list[str]]
) -> None:
    async with running_service(socket_config(databases, tmp_path), "authsocket"):
        client = await Client.connect(tmp_path / "auth")
        try:
            for fields in first_lines:
                client.send(*fields)
            received = await asyncio.wait_for(client.reader.read(), 10)
        finally:
            await client.close()
    assert [line.split(b"\t")[0] for line in received.splitlines()] == [
        b"VERSION",
        b"MECH",
        b"MECH",
        b"SPID",
        b"CUID",
        b"COOKIE",
        b"DONE",
    ]


async def test_a_tcp_listener_answers_only_allowed_peers(databases: Databases) -> None:
    """A TCP peer names its clients' addresses (rip=, which the throttling counts by and
    trusted_networks exempts), so one outside `allowed_peers` is not answered at all."""
    port = free_port()
    cfg = make_config(
        databases,
        authsocket={"listen": [f"127.0.0.1:{port}"], "allowed_peers": ["127.0.0.1/32"]},
    )

    async def first_line(source: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        try:
            return await asyncio.wait_for(reader.readline(), 10)
        finally:
            writer.close()

    async with running_service(cfg, "authsocket"):
        allowed = await first_line("127.0.0.1")
        other = await first_line("127.0.0.2")
    assert allowed == b"VERSION\t1\t2\n"
    assert other == b""
