"""nginx mail auth_http: requests shaped as nginx sends them, answered from the engine."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest

from encimap import logs
from encimap.pgcluster import free_port
from tests.service_support import running_service
from tests.support import REPO, Databases, DemoVaultbox, make_config, make_motorblock, make_vaultbox

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


async def request(
    port: int,
    user: str,
    password: str,
    protocol: str,
    method: str = "plain",
    client_ip: str | None = "192.0.2.44",
    extra: str = "",
) -> tuple[str, dict]:
    """One request exactly as nginx's ngx_mail_auth_http module writes it (`extra`: the
    headers of `auth_http_header`); (status line, the Auth-* headers of the answer)."""
    text = (
        "GET /auth HTTP/1.0\r\n"
        "Host: localhost\r\n"
        f"Auth-Method: {method}\r\n"
        f"Auth-User: {quote(user, safe='')}\r\n"
        f"Auth-Pass: {quote(password, safe='')}\r\n"
        f"Auth-Protocol: {protocol}\r\n"
        "Auth-Login-Attempt: 1\r\n"
        + (f"Client-IP: {client_ip}\r\n" if client_ip is not None else "")
        + "Client-Host: [UNAVAILABLE]\r\n"
        "Auth-SSL: on\r\n" + extra + "\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(text.encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status, *lines = raw.decode().split("\r\n")
    # nginx reads only the Auth-* headers of the answer.
    return status, dict(line.split(": ", 1) for line in lines if line.startswith("Auth-"))


async def ask(port: int, user: str, password: str, protocol: str, method: str = "plain") -> dict:
    status, headers = await request(port, user, password, protocol, method)
    assert status == "HTTP/1.0 200 OK"
    return headers


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


# --- only nginx may call it ----------------------------------------------------------------


async def test_missing_or_invalid_client_ip_is_refused(endpoint) -> None:
    """Issue 14 #8: without Client-IP there was no throttling and the log said rip=unknown."""
    port, box = endpoint
    for value in (None, "", "unknown", "192.0.2.300", "[UNAVAILABLE]"):
        status, headers = await request(port, box.username, box.password, "imap", client_ip=value)
        assert status == "HTTP/1.0 400 Bad Request" and headers == {}, value
    status, _ = await request(port, box.username, box.password, "imap", client_ip="2001:db8::1")
    assert status == "HTTP/1.0 200 OK"


async def test_a_client_ip_of_127_0_0_1_is_throttled_unless_trusted(
    databases: Databases, tmp_path
) -> None:
    """Issue 14 #8: `Client-IP: 127.0.0.1` was exempt from every delay and limit."""
    box = await make_vaultbox(databases, "nginx-loop@vault.test", password="right")
    for trusted, third in ((False, "Temporary server problem, try again later"), (True, None)):
        port = free_port()
        cfg = make_config(
            databases,
            authsocket={
                "listen": [f"unix:{tmp_path}/auth-{trusted}"],
                "http_listen": f"127.0.0.1:{port}",
                "http_trust_client_networks": trusted,
            },
            auth={
                "throttle_base_delay": 0.01,
                "throttle_max_delay": 0.02,
                "max_failures_per_ip": 2,
            },
        )
        async with running_service(cfg, "authsocket"):
            answers = [
                (await request(port, box.username, f"wrong{i}", "imap", client_ip="127.0.0.1"))[1]
                for i in range(3)
            ]
        assert answers[0]["Auth-Status"] == answers[1]["Auth-Status"] == "Invalid login or password"
        assert answers[2]["Auth-Status"] == (third or "Invalid login or password")


async def test_only_allowed_peers_with_the_secret_may_ask(databases: Databases, tmp_path) -> None:
    box = await make_vaultbox(databases, "nginx-secret@vault.test", password="right")
    secret = tmp_path / "secret"
    secret.write_text("s3cret-shared-with-nginx\n")
    port = free_port()
    base = {"listen": [f"unix:{tmp_path}/auth"], "http_listen": f"127.0.0.1:{port}"}
    cfg = make_config(databases, authsocket={**base, "http_secret_file": str(secret)})
    async with running_service(cfg, "authsocket"):
        refused = [
            await request(port, box.username, "right", "imap", extra=extra)
            for extra in ("", "X-Encimap-Secret: wrong\r\n", "X-Encimap-Secret: \r\n")
        ]
        accepted = await request(
            port,
            box.username,
            "right",
            "imap",
            extra="X-Encimap-Secret: s3cret-shared-with-nginx\r\n",
        )
    assert all(answer == ("HTTP/1.0 403 Forbidden", {}) for answer in refused)
    assert accepted[1]["Auth-Status"] == "OK"

    port = free_port()
    base = {"listen": [f"unix:{tmp_path}/auth2"], "http_listen": f"127.0.0.1:{port}"}
    cfg = make_config(databases, authsocket={**base, "http_allowed_peers": ["192.0.2.0/24"]})
    async with running_service(cfg, "authsocket"):
        try:  # disconnected without an answer (a reset, as the request was not read)
            answer = await request(port, box.username, "right", "imap")
        except ConnectionResetError:
            answer = ("", {})
        assert answer == ("", {})


async def test_requests_nginx_cannot_mean_are_logged_with_their_reason(endpoint, capsys) -> None:
    port, box = endpoint
    logs.configure("info", "json")
    try:
        pop3 = await request(port, box.username, "Pop3-Secret", "pop3")
        cram = await request(port, box.username, "Cram-Secret", "imap", method="cram-md5")
    finally:
        logs.configure("warning", "console")
    assert pop3[1]["Auth-Status"] == cram[1]["Auth-Status"] == "Invalid login or password"
    err = capsys.readouterr().err
    assert "Secret" not in err
    failures = [
        (event["event"].split(",")[0], event["reason"])
        for event in map(json.loads, err.splitlines())
        if event["event"].startswith("auth failed:")
    ]
    assert failures == [
        (f"auth failed: user=<{box.username}>", "unknown protocol"),
        (f"auth failed: user=<{box.username}>", "unknown mechanism"),
    ]


async def test_every_failure_line_is_one_fail2ban_reads(endpoint, capsys) -> None:
    """Whatever Auth-Method says, the line keeps the shape of contrib/fail2ban's filter."""
    port, box = endpoint
    logs.configure("info", "json")
    try:
        for method in ("", "x y", "plain"):
            await request(port, box.username, "wrong", "smtp", method=method)
    finally:
        logs.configure("warning", "console")
    filter_text = (REPO / "contrib/fail2ban/filter.d/encimap.conf").read_text()
    [failregex] = re.findall(r"^failregex = (.*)$", filter_text, re.MULTILINE)
    pattern = re.compile(failregex.replace("<ADDR>", r"(?P<addr>[0-9.]+)"))
    failures = [
        event["event"]
        for event in map(json.loads, capsys.readouterr().err.splitlines())
        if event["event"].startswith("auth failed:")
    ]
    assert len(failures) == 3, failures
    assert [m.group("addr") for m in map(pattern.search, failures) if m] == ["192.0.2.44"] * 3, (
        failures
    )
