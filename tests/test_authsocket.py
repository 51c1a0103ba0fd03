"""The Dovecot-protocol auth socket: a scripted client following FACTS.md, and real Postfix
(`smtpd_sasl_type = dovecot`) driven by swaks."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from encimap.auth.passwords import hash_password
from encimap.authsocket import codec
from encimap.config import Config
from encimap.store import credentials
from tests.postfix_support import PrivatePostfix, reachable_dir, skip_reason
from tests.service_support import running_service
from tests.support import (
    Databases,
    DemoVaultbox,
    make_config,
    make_motorblock,
    make_vaultbox,
    run_cli,
    write_config_file,
)

pytestmark = pytest.mark.timeout(90)
FAST_THROTTLE = {"throttle_base_delay": 0.01, "throttle_max_delay": 0.02}


def socket_config(databases: Databases, directory: Path, **auth: object) -> Config:
    return make_config(
        databases,
        authsocket={
            "listen": [f"unix:{directory}/auth"],
            "socket_mode": "0660",
            "socket_group": "postfix",
        },
        auth={**FAST_THROTTLE, **auth},
    )


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    directory = reachable_dir("encimap-auth-")
    yield directory
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()


@pytest.fixture
async def auth_socket(databases: Databases, socket_dir: Path) -> AsyncIterator[Path]:
    async with running_service(socket_config(databases, socket_dir), "authsocket"):
        yield socket_dir / "auth"


@pytest.fixture(scope="module")
def logins(databases: Databases) -> dict[str, object]:
    async def create() -> dict[str, object]:
        box = await make_vaultbox(databases, "sock@vault.test", password="box-pass")
        smtp_only = await make_vaultbox(
            databases, "sockmtp@vault.test", password="smtp-pass", kinds=("smtp",)
        )
        await make_motorblock(databases, username="sock-mb", password="mb-pass", domain="mb.test")
        return {"box": box, "smtp_only": smtp_only}

    return asyncio.run(create())


class Client:
    """A scripted Dovecot auth client (what Postfix's xsasl_dovecot does)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, path: Path) -> Client:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
        return cls(reader, writer)

    async def handshake(self) -> list[list[str]]:
        self.send("VERSION", "1", "2")
        self.send("CPID", "4242")
        lines = []
        while not lines or lines[-1] != ["DONE"]:
            lines.append(await self.line())
        return lines

    def send(self, *fields: str) -> None:
        self.writer.write(("\t".join(fields) + "\n").encode())

    async def line(self) -> list[str]:
        raw = await asyncio.wait_for(self.reader.readline(), 10)
        assert raw.endswith(b"\n"), raw
        return raw[:-1].decode().split("\t")

    async def close(self) -> None:
        self.writer.close()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plain(user: str, password: str, authzid: str = "") -> str:
    return b64(f"{authzid}\0{user}\0{password}")


AUTH_PARAMS = ("service=smtp", "nologin", "lip=127.0.0.1", "rip=127.0.0.1", "secured")


async def test_handshake_order(auth_socket: Path) -> None:
    client = await Client.connect(auth_socket)
    try:
        lines = await client.handshake()
    finally:
        await client.close()
    commands = [line[0] for line in lines]
    assert lines[0] == ["VERSION", "1", "2"]
    assert commands == ["VERSION", "MECH", "MECH", "SPID", "CUID", "COOKIE", "DONE"]
    assert lines[1] == ["MECH", "PLAIN", "plaintext"] and lines[2] == ["MECH", "LOGIN", "plaintext"]
    assert re.fullmatch(r"[0-9a-f]{32}", lines[5][1])


async def test_plain_login_and_imap_service(auth_socket: Path, logins: dict) -> None:
    box: DemoVaultbox = logins["box"]
    smtp_only: DemoVaultbox = logins["smtp_only"]
    client = await Client.connect(auth_socket)
    try:
        await client.handshake()
        client.send("AUTH", "1", "PLAIN", *AUTH_PARAMS, f"resp={plain(box.username, 'box-pass')}")
        assert await client.line() == ["OK", "1", f"user={box.username}"]
        client.send("AUTH", "2", "PLAIN", *AUTH_PARAMS, f"resp={plain('sock-mb', 'mb-pass')}")
        assert await client.line() == ["OK", "2", "user=sock-mb"]
        client.send("AUTH", "3", "PLAIN", *AUTH_PARAMS, f"resp={plain('sock-mb', 'nope')}")
        assert await client.line() == ["FAIL", "3", "reason=Authentication failed"]
        imap = ("service=imap", "rip=127.0.0.1", "secured")
        client.send("AUTH", "4", "PLAIN", *imap, f"resp={plain(box.username, 'box-pass')}")
        assert await client.line() == ["OK", "4", f"user={box.username}"]
        resp = plain(smtp_only.username, "smtp-pass")
        client.send("AUTH", "5", "PLAIN", *imap, f"resp={resp}")
        assert (await client.line())[:2] == ["FAIL", "5"]
        client.send("AUTH", "6", "PLAIN", *AUTH_PARAMS, f"resp={resp}")
        assert (await client.line())[:2] == ["OK", "6"]
        # Acting as someone else (authzid) is refused even with the right password.
        other = plain(box.username, "box-pass", authzid="sock-mb")
        client.send("AUTH", "7", "PLAIN", *AUTH_PARAMS, f"resp={other}")
        assert (await client.line())[:2] == ["FAIL", "7"]
    finally:
        await client.close()


async def test_plain_without_initial_response_and_login(auth_socket: Path, logins: dict) -> None:
    box: DemoVaultbox = logins["box"]
    client = await Client.connect(auth_socket)
    try:
        await client.handshake()
        client.send("AUTH", "1", "PLAIN", *AUTH_PARAMS)
        assert await client.line() == ["CONT", "1", ""]
        client.send("CONT", "1", plain(box.username, "box-pass"))
        assert await client.line() == ["OK", "1", f"user={box.username}"]
        client.send("AUTH", "2", "LOGIN", *AUTH_PARAMS)
        assert await client.line() == ["CONT", "2", "VXNlcm5hbWU6"]
        client.send("CONT", "2", b64(box.username))
        assert await client.line() == ["CONT", "2", "UGFzc3dvcmQ6"]
        client.send("CONT", "2", b64("box-pass"))
        assert await client.line() == ["OK", "2", f"user={box.username}"]
        # LOGIN with the username as initial response (Postfix: AUTH LOGIN <b64 user>).
        client.send("AUTH", "3", "LOGIN", *AUTH_PARAMS, f"resp={b64(box.username)}")
        assert await client.line() == ["CONT", "3", "UGFzc3dvcmQ6"]
        client.send("CONT", "3", b64("wrong"))
        assert await client.line() == ["FAIL", "3", "reason=Authentication failed"]
        client.send("AUTH", "4", "CRAM-MD5", *AUTH_PARAMS)
        assert (await client.line())[:2] == ["FAIL", "4"]
        client.send("AUTH", "5", "PLAIN", *AUTH_PARAMS, "resp=!!notbase64")
        assert (await client.line())[:2] == ["FAIL", "5"]
    finally:
        await client.close()


async def test_many_requests_in_flight_on_one_connection(
    databases: Databases, socket_dir: Path, logins: dict
) -> None:
    box: DemoVaultbox = logins["box"]
    conn = await databases.connect()
    slow = await make_vaultbox(databases, "slowsock@vault.test", password="x")
    # A slow (cost 10) hash makes the requests overlap for real.
    await credentials.set_password(conn, "smtp", slow.username, hash_password("slow-pass", 10))
    await conn.close()
    async with running_service(socket_config(databases, socket_dir, bcrypt_cost=10), "authsocket"):
        client = await Client.connect(socket_dir / "auth")
        try:
            await client.handshake()
            expected = {}
            for i in range(1, 9):
                good = i % 2 == 0
                user, password = (slow.username, "slow-pass" if good else f"bad{i}")
                if i == 3:
                    user, password = box.username, "box-pass"
                    good = True
                client.send("AUTH", str(i), "PLAIN", *AUTH_PARAMS, f"resp={plain(user, password)}")
                expected[str(i)] = "OK" if good else "FAIL"
            answers = {}
            for _ in expected:
                line = await client.line()
                answers[line[1]] = line[0]
            assert answers == expected
        finally:
            await client.close()


async def test_overlong_line_closes_connection(auth_socket: Path) -> None:
    client = await Client.connect(auth_socket)
    try:
        await client.handshake()
        client.send("AUTH", "1", "PLAIN", "service=smtp", "resp=" + "A" * (codec.MAX_LINE + 10))
        assert await asyncio.wait_for(client.reader.read(), 10) == b""
    finally:
        await client.close()


def test_tab_escaping_round_trips() -> None:
    value = "a\tb\x01c\nd\re"
    assert codec.escape(value) == "a\x01tb\x011c\x01nd\x01re"
    assert codec.unescape(codec.escape(value)) == value
    assert codec.split_line(codec.join_line("OK", "1", "user=x\ty")[:-1]) == [
        "OK",
        "1",
        "user=x\ty",
    ]


async def test_database_outage_is_a_temporary_failure(
    fresh_databases: Databases, socket_dir: Path
) -> None:
    box = await make_vaultbox(fresh_databases, "down@vault.test", password="pw")
    async with running_service(socket_config(fresh_databases, socket_dir), "authsocket"):
        await _block_database(fresh_databases)
        try:
            client = await Client.connect(socket_dir / "auth")
            await client.handshake()
            client.send("AUTH", "1", "PLAIN", *AUTH_PARAMS, f"resp={plain(box.username, 'pw')}")
            # Closing is the temporary failure Postfix understands (it ignores FAIL's `temp`).
            assert await asyncio.wait_for(client.reader.read(), 10) == b""
            await client.close()
        finally:
            await _block_database(fresh_databases, allow=True)


async def _block_database(databases: Databases, *, allow: bool = False) -> None:
    name = databases.encimap_url.rsplit("/", 1)[1]
    admin = await databases.connect("motorical")
    try:
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {str(allow).lower()}")
        if not allow:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
    finally:
        await admin.close()


# --- real Postfix -------------------------------------------------------------------------


def swaks(port: int, mechanism: str, user: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{port}",
            "--auth",
            mechanism,
            "--auth-user",
            user,
            "--auth-password",
            password,
            "--quit-after",
            "AUTH",
            "--timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def postfix_for(request: pytest.FixtureRequest):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    started: list[PrivatePostfix] = []

    def start(socket_path: Path) -> PrivatePostfix:
        instance = PrivatePostfix(
            {
                "smtpd_sasl_auth_enable": "yes",
                "smtpd_sasl_type": "dovecot",
                "smtpd_sasl_path": str(socket_path),
                "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
            }
        )
        instance.start()
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()
        instance.cleanup()


async def test_postfix_plain_and_login(auth_socket: Path, logins: dict, postfix_for) -> None:
    box: DemoVaultbox = logins["box"]
    postfix = await asyncio.to_thread(postfix_for, auth_socket)
    for mechanism in ("PLAIN", "LOGIN"):
        for user, password in ((box.username, "box-pass"), ("sock-mb", "mb-pass")):
            good = await asyncio.to_thread(swaks, postfix.port, mechanism, user, password)
            assert "235 2.7.0 Authentication successful" in good.stdout, good.stdout + postfix.log()
        bad = await asyncio.to_thread(swaks, postfix.port, mechanism, box.username, "wrong")
        assert "535 5.7.8" in bad.stdout, bad.stdout
        assert "Error: authentication failed: Authentication failed" in bad.stdout
    assert postfix.logged(f"SASL {mechanism} authentication failed"), postfix.log()


async def test_postfix_database_outage_answers_454(
    fresh_databases: Databases, socket_dir: Path, postfix_for
) -> None:
    box = await make_vaultbox(fresh_databases, "pfdown@vault.test", password="pw")
    async with running_service(socket_config(fresh_databases, socket_dir), "authsocket"):
        postfix = await asyncio.to_thread(postfix_for, socket_dir / "auth")
        ok = await asyncio.to_thread(swaks, postfix.port, "PLAIN", box.username, "pw")
        assert "235 2.7.0" in ok.stdout, ok.stdout
        await _block_database(fresh_databases)
        try:
            down = await asyncio.to_thread(swaks, postfix.port, "PLAIN", box.username, "pw")
        finally:
            await _block_database(fresh_databases, allow=True)
        assert "454 4.7.0" in down.stdout, down.stdout + postfix.log()


async def test_check_reports_auth_pools_and_socket(
    databases: Databases, auth_socket: Path, tmp_path: Path
) -> None:
    config_file = write_config_file(
        tmp_path / "encimap.toml",
        databases,
        f'[authsocket]\nlisten = ["unix:{auth_socket}"]\n',
    )
    result = await asyncio.to_thread(run_cli, "check", config_file=config_file)
    port = databases.cluster.port
    for database in ("motorical", "encimap"):
        assert (
            f"ok   auth pool {database}: role encimap_auth reads its login tables, "
            f"connected to 127.0.0.1:{port} (primary)" in result.stdout
        )
    assert f"ok   auth socket unix:{auth_socket}: answers the handshake (PLAIN, LOGIN)" in (
        result.stdout
    ), result.stdout + result.stderr


async def test_stop_answers_requests_in_flight(databases: Databases, socket_dir: Path) -> None:
    """SIGTERM-like stop: a login already being checked is answered before the socket closes."""
    slow = await make_vaultbox(databases, "drain@vault.test", password="x")
    conn = await databases.connect()
    await credentials.set_password(conn, "smtp", slow.username, hash_password("drain-pass", 11))
    await conn.close()
    cfg = socket_config(databases, socket_dir, bcrypt_cost=11)
    async with running_service(cfg, "authsocket") as stop:
        client = await Client.connect(socket_dir / "auth")
        try:
            await client.handshake()
            client.send(
                "AUTH", "1", "PLAIN", *AUTH_PARAMS, f"resp={plain(slow.username, 'drain-pass')}"
            )
            await client.writer.drain()
            await asyncio.sleep(0.02)
            stop.set()
            assert await client.line() == ["OK", "1", f"user={slow.username}"]
            assert await asyncio.wait_for(client.reader.read(), 10) == b""
        finally:
            await client.close()
