"""nginx mail auth_http: requests shaped as nginx sends them, answered from the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest

from encimap.pgcluster import free_port
from tests.service_support import running_service
from tests.support import Databases, DemoVaultbox, make_config, make_motorblock, make_vaultbox

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def endpoint(databases: Databases, tmp_path) -> AsyncIterator[tuple[int, DemoVaultbox]]:
    port = free_port()
    box = await make_vaultbox(databases, f"nginx-{port}@vault.test", password="p%ss w+rd:ü")
    await make_motorblock(
        databases, username=f"nginx-mb-{port}", password="mb pass", domain="n.test"
    )
    cfg = make_config(
        databases,
        authsocket={
            "listen": [f"unix:{tmp_path}/auth"],
            "http_listen": f"127.0.0.1:{port}",
            "imap_upstream": "127.0.0.1:1143",
            "smtp_upstream": "localhost:2587",
        },
        auth={"throttle_base_delay": 0.01, "throttle_max_delay": 0.02},
    )
    async with running_service(cfg, "authsocket"):
        yield port, box


async def ask(port: int, user: str, password: str, protocol: str, method: str = "plain") -> dict:
    """One request exactly as nginx's ngx_mail_auth_http module writes it."""
    request = (
        "GET /auth HTTP/1.0\r\n"
        "Host: localhost\r\n"
        f"Auth-Method: {method}\r\n"
        f"Auth-User: {quote(user, safe='')}\r\n"
        f"Auth-Pass: {quote(password, safe='')}\r\n"
        f"Auth-Protocol: {protocol}\r\n"
        "Auth-Login-Attempt: 1\r\n"
        "Client-IP: 192.0.2.44\r\n"
        "Client-Host: [UNAVAILABLE]\r\n"
        "Auth-SSL: on\r\n"
        "\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request.encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status, *lines = raw.decode().split("\r\n")
    assert status == "HTTP/1.0 200 OK"
    # nginx reads only the Auth-* headers of the answer.
    return dict(line.split(": ", 1) for line in lines if line.startswith("Auth-"))


async def test_imap_and_smtp_logins(endpoint: tuple[int, DemoVaultbox]) -> None:
    port, box = endpoint
    imap = await ask(port, box.username, box.password, "imap")
    assert imap == {"Auth-Status": "OK", "Auth-Server": "127.0.0.1", "Auth-Port": "1143"}
    smtp = await ask(port, f"nginx-mb-{port}", "mb pass", "smtp", method="login")
    assert smtp == {"Auth-Status": "OK", "Auth-Server": "127.0.0.1", "Auth-Port": "2587"}


async def test_failures(endpoint: tuple[int, DemoVaultbox]) -> None:
    port, box = endpoint
    imap = await ask(port, box.username, "wrong", "imap")
    assert imap == {"Auth-Status": "Invalid login or password", "Auth-Wait": "1"}
    smtp = await ask(port, "nobody", "x", "smtp")
    assert smtp["Auth-Status"] == "Invalid login or password"
    assert smtp["Auth-Error-Code"] == "535 5.7.8"
    # The MotorBlock is an SMTP login only; POP3 and CRAM-MD5 are not served.
    assert (await ask(port, f"nginx-mb-{port}", "mb pass", "imap"))["Auth-Status"] != "OK"
    assert (await ask(port, box.username, box.password, "pop3"))["Auth-Status"] != "OK"
    cram = await ask(port, box.username, box.password, "imap", method="cram-md5")
    assert cram["Auth-Status"] != "OK"


async def test_database_outage_is_temporary(fresh_databases: Databases, tmp_path) -> None:
    box = await make_vaultbox(fresh_databases, "nginxdown@vault.test", password="pw")
    port = free_port()
    cfg = make_config(
        fresh_databases,
        authsocket={"listen": [f"unix:{tmp_path}/auth"], "http_listen": f"127.0.0.1:{port}"},
    )
    name = fresh_databases.encimap_url.rsplit("/", 1)[1]
    async with running_service(cfg, "authsocket"):
        admin = await fresh_databases.connect("motorical")
        try:
            await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            smtp = await ask(port, box.username, "pw", "smtp")
            assert smtp == {
                "Auth-Status": "Temporary server problem, try again later",
                "Auth-Error-Code": "451 4.3.0",
            }
            imap = await ask(port, box.username, "pw", "imap")
            assert imap == {"Auth-Status": "Temporary server problem, try again later"}
        finally:
            await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
            await admin.close()
