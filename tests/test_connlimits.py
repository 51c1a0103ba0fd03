"""Connection limits on every listener (issue 14 #6): per client address, not yet logged in,
the login phase and the DATA phase as a whole. Real sockets against the real services."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from encimap import logs
from encimap.authsocket import codec
from encimap.pgcluster import free_port
from encimap.service.connlimits import ConnectionLimiter, Limits, address_key
from tests.imap_support import imap_config, make_box, ports, running_imap
from tests.intake_support import intake_config, port_of, running_intake
from tests.service_support import running_service
from tests.submission_helpers import (
    login,
    message,
    sink,
    starttls_port,
    submission,
    submission_config,
)
from tests.support import make_config, make_motorblock

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD, DOMAIN = "mb-connlimits", "connlimits-pw", "connlimits.test"


@pytest.fixture(scope="module")
def motorblock(databases):
    return asyncio.run(make_motorblock(databases, username=USER, password=PASSWORD, domain=DOMAIN))


@contextlib.asynccontextmanager
async def limited_submission(databases, tls_files, **limits) -> AsyncIterator:
    with sink() as (controller, handler):
        cfg = submission_config(databases, tls_files, controller.port, **limits)
        async with submission(cfg) as service:
            yield service, handler


class Raw:
    """A plain TCP client reading lines, from a chosen local address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, source: str = "127.0.0.1") -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), 20)

    async def closed(self) -> bool:
        """True once the server has closed the connection (after any lines still pending)."""
        await self.rest()
        return True

    async def rest(self) -> list[bytes]:
        """Every line until the server closes the connection."""
        lines = []
        with contextlib.suppress(ConnectionError):
            while line := await self.line():
                lines.append(line)
        return lines

    async def trickle(self, data: bytes, pause: float) -> None:
        """Send `data` a byte at a time until it is sent or the server has closed."""
        with contextlib.suppress(ConnectionError):
            for byte in data:
                if self.writer.is_closing() or self.reader.at_eof():
                    return
                self.writer.write(bytes([byte]))
                await self.writer.drain()
                await asyncio.sleep(pause)

    def close(self) -> None:
        self.writer.close()


async def until(condition, seconds: float = 10.0) -> None:
    """Wait until `condition()` holds (the server side catching up), at most `seconds`."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def open_many(port: int, count: int, source: str = "127.0.0.1") -> list[Raw]:
    clients = [await Raw.connect(port, source) for _ in range(count)]
    for client in clients:
        assert (await client.line())[:1] in (b"2", b"*", b"V", b"M")  # admitted: a greeting
    return clients


# --- the shared mechanism ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_ip", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ],
)
def test_ipv6_clients_count_per_64(client_ip, key):
    assert address_key(client_ip) == key


async def test_limiter_counts_and_releases():
    limiter = ConnectionLimiter("test", Limits(max_connections=3, per_ip=2, unauthenticated=2))
    expired = []
    a = limiter.admit("2001:db8::1", login=True, on_login_timeout=lambda: expired.append("a"))
    b = limiter.admit("2001:db8::2", login=True)
    assert a is not None and b is not None
    assert limiter.admit("2001:db8::3", login=True) is None  # the same /64
    assert limiter.admit("192.0.2.1", login=True) is None  # two not logged in already
    a.logged_in()
    c = limiter.admit("192.0.2.1", login=True)
    assert c is not None
    assert limiter.admit("192.0.2.2") is None  # three in all
    for ticket in (a, b, c, a):  # releasing twice changes nothing
        ticket.release()
    assert (limiter.total, limiter.unauthenticated, limiter.open_from("2001:db8::5")) == (0, 0, 0)


async def test_login_timer_fires_only_for_connections_still_not_logged_in():
    limiter = ConnectionLimiter("test", Limits(login_timeout=0.05))
    expired: list[str] = []
    slow = limiter.admit("192.0.2.1", login=True, on_login_timeout=lambda: expired.append("slow"))
    quick = limiter.admit("192.0.2.2", login=True, on_login_timeout=lambda: expired.append("q"))
    assert slow is not None and quick is not None
    quick.logged_in()
    await asyncio.sleep(0.2)
    assert expired == ["slow"]


# --- submission ------------------------------------------------------------------------------


async def test_submission_limits_connections_per_client_address(databases, tls_files, motorblock):
    async with limited_submission(databases, tls_files, max_connections_per_ip=3) as (svc, _):
        port = starttls_port(svc)
        held = await open_many(port, 3)
        extra = await Raw.connect(port)
        assert await extra.line() == b"421 4.7.0 Too many connections, try again later\r\n"
        assert await extra.closed()
        other_address = await Raw.connect(port, source="127.0.0.2")
        assert (await other_address.line()).startswith(b"220 ")
        held[0].close()
        await until(lambda: svc.limiter.open_from("127.0.0.1") == 2)  # the server saw it
        again = await Raw.connect(port)
        assert (await again.line()).startswith(b"220 ")
        for client in [*held[1:], other_address, again]:
            client.close()
        await until(lambda: svc.limiter.total == 0)


async def test_submission_caps_connections_that_have_not_logged_in(
    databases, tls_files, tls_ca, motorblock
):
    async with limited_submission(databases, tls_files, max_unauthenticated=2) as (svc, _):
        port = starttls_port(svc)
        waiting = await open_many(port, 2)
        refused = await Raw.connect(port)
        assert (await refused.line()).startswith(b"421 4.7.0")
        waiting[0].close()
        await until(lambda: svc.limiter.unauthenticated == 1)
        client = await asyncio.to_thread(login, port, tls_ca, USER, PASSWORD)  # takes its place
        try:
            # Logged in, it no longer counts: another connection may wait for its login.
            newcomer = await Raw.connect(port)
            assert (await newcomer.line()).startswith(b"220 ")
            newcomer.close()
        finally:
            client.close()
            waiting[1].close()


async def test_submission_login_phase_has_a_total_time_budget(
    databases, tls_files, tls_ca, motorblock
):
    """A slowloris that keeps every read alive (and even sends valid commands) is cut off."""
    async with limited_submission(databases, tls_files, login_timeout=2.0) as (svc, _):
        port = starttls_port(svc)
        slow = await Raw.connect(port)
        assert (await slow.line()).startswith(b"220 ")
        sending = asyncio.create_task(slow.trickle(b"NOOP\r\n" * 100, 0.02))
        lines = await slow.rest()
        await sending
        assert lines and lines[-1] == b"421 4.7.0 Login time limit exceeded, closing connection\r\n"

        # A logged-in session is not bound by it.
        client = await asyncio.to_thread(login, port, tls_ca, USER, PASSWORD)
        try:
            await asyncio.sleep(2.5)
            assert (await asyncio.to_thread(client.noop))[0] == 250
        finally:
            client.close()


async def test_submission_data_phase_has_a_total_time_budget(
    databases, tls_files, tls_ca, motorblock
):
    sender = f"a@{DOMAIN}"
    limits = {"data_timeout": 1.0, "timeout": 300.0}
    async with limited_submission(databases, tls_files, **limits) as (svc, handler):
        client = await asyncio.to_thread(login, starttls_port(svc), tls_ca, USER, PASSWORD)

        def trickle() -> bytes:
            client.docmd("MAIL", f"FROM:<{sender}>")
            client.docmd("RCPT", "TO:<r@elsewhere.test>")
            assert client.docmd("DATA")[0] == 354
            client.sock.settimeout(0.01)
            received = b""
            try:
                for byte in message(sender, ["r@elsewhere.test"]) * 20:
                    client.sock.sendall(bytes([byte]))
                    with contextlib.suppress(TimeoutError, socket.timeout):
                        chunk = client.sock.recv(100)
                        if not chunk:
                            break
                        received += chunk
            except OSError:
                pass
            return received

        assert await asyncio.to_thread(trickle) == b"421 4.4.2 Timeout, closing connection\r\n"
        client.close()
    assert handler.messages == []


async def test_sessions_closed_before_ehlo_log_the_client_address(databases, tls_files, motorblock):
    async with limited_submission(databases, tls_files) as (svc, _):
        logs.configure("info", "console")
        try:
            with capture_logs() as captured:
                client = await Raw.connect(starttls_port(svc), source="127.0.0.3")
                assert (await client.line()).startswith(b"220 ")
                client.close()
                for _ in range(100):
                    if any(e["event"] == "submission.session" for e in captured):
                        break
                    await asyncio.sleep(0.05)
        finally:
            logs.configure("warning", "console")
    [session] = [e for e in captured if e["event"] == "submission.session"]
    assert session["rip"] == "127.0.0.3"


# --- intake, IMAP, auth socket -----------------------------------------------------------------


async def test_intake_limits_connections_per_client_address(databases):
    cfg = intake_config(databases, max_connections_per_ip=2)
    async with running_intake(cfg):
        held = await open_many(port_of(cfg), 2)
        extra = await Raw.connect(port_of(cfg))
        assert await extra.line() == b"421 4.7.0 Too many connections, try again later\r\n"
        assert await extra.closed()
        other = await Raw.connect(port_of(cfg), source="127.0.0.2")
        assert (await other.line()).startswith(b"220 ")
        for client in [*held, other]:
            client.close()


async def test_imap_limits_connections_and_the_login_phase(databases, tls_files, tmp_path):
    await make_box(databases, "connlimits@vault.test", tmp_path)
    cfg = imap_config(databases, tls_files, max_connections_per_ip=2, login_timeout=1.0)
    port = ports(cfg)[0]
    async with running_imap(cfg):
        held = await open_many(port, 2)
        extra = await Raw.connect(port)
        assert (await extra.line()).startswith(b"* BYE [UNAVAILABLE] Too many connections")
        assert await extra.closed()
        # The two held ones never log in: closed at the login deadline, whatever they send.
        for client in held:
            client.writer.write(b"a NOOP\r\n")
        for client in held:
            lines = await client.rest()
            assert lines and lines[-1] == b"* BYE Disconnected for inactivity during login\r\n"


async def test_authsocket_tcp_limits_connections_per_client_address(databases, tmp_path):
    port = free_port()
    cfg = make_config(
        databases,
        authsocket={"listen": [f"127.0.0.1:{port}"], "max_connections_per_ip": 2},
    )
    async with running_service(cfg, "authsocket"):
        held = await open_many(port, 2)
        extra = await Raw.connect(port)
        assert await extra.line() == b""  # closed without the handshake
        other = await Raw.connect(port, source="127.0.0.2")
        assert (await other.line()).startswith(f"VERSION\t{codec.MAJOR_VERSION}".encode())
        for client in [*held, other]:
            client.close()
