"""The submission port against a hostile client: overlong and malformed SASL responses, `*`,
logging in as someone else (each decision one log line with user, address and reason, none
holding the password), and floods of refused commands. Real PostgreSQL, real TLS, smtplib,
the aiosmtpd sink as the upstream."""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib

import pytest

from encimap import logs
from tests.submission_helpers import (
    REFUSED_RECIPIENT_PREFIX,
    client_context,
    starttls_port,
    submission,
    submission_config,
)
from tests.support import make_motorblock

pytestmark = pytest.mark.timeout(60)
USER, PASSWORD = "mb-hostile", "Hostile-Secret-77"


@pytest.fixture(scope="module")
def motorblock(databases):
    return asyncio.run(
        make_motorblock(databases, username=USER, password=PASSWORD, domain="hostile.test")
    )


@pytest.fixture
async def port(databases, tls_files, motorblock, upstream):
    async with submission(submission_config(databases, tls_files, upstream[0].port)) as svc:
        yield starttls_port(svc)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def session(port: int, tls_ca, lines: list[bytes]) -> list[tuple[int, bytes]]:
    """The replies to `lines`, sent one at a time after STARTTLS and EHLO."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=client_context(tls_ca))
        client.ehlo()
        answers = []
        for line in lines:
            client.send(line + b"\r\n")
            answers.append(client.getreply())
        return answers


async def test_an_overlong_sasl_response_is_refused_and_read_to_its_end(port, tls_ca):
    """RFC 4954 4: 500 5.5.6; nothing of the long line is taken for a command."""
    overlong = b"A" * 5000 + b" NOOP" * 400
    replies = await asyncio.to_thread(
        session,
        port,
        tls_ca,
        [
            b"AUTH LOGIN",
            overlong,
            b"AUTH LOGIN " + b64(USER.encode()),
            overlong,
            b"NOOP",
            b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}".encode()),
        ],
    )
    assert replies == [
        (334, b"VXNlcm5hbWU6"),
        (500, b"5.5.6 Authentication exchange line is too long"),
        (334, b"UGFzc3dvcmQ6"),
        (500, b"5.5.6 Authentication exchange line is too long"),
        (250, b"2.0.0 OK"),
        (235, b"2.7.0 Authentication successful"),
    ]


async def test_every_decision_is_one_line_and_no_line_holds_the_password(
    port, tls_ca, capsys
) -> None:
    secret = PASSWORD.encode()
    attempts = [
        [b"AUTH PLAIN " + secret + b"!"],  # not base64
        [b"AUTH PLAIN " + b64(b"\0" + secret)],  # two fields: the second may be the password
        [b"AUTH PLAIN " + b64(b"ceo\0" + USER.encode() + b"\0" + secret)],  # as someone else
        [b"AUTH LOGIN " + b64(USER.encode()), secret + b"!"],  # password not base64
        [b"AUTH LOGIN " + b64(USER.encode()), secret * 100],  # overlong
        [b"AUTH LOGIN", b"*"],  # cancelled: no decision
        [b"AUTH LOGIN " + b64(USER.encode()), b64(b"wrong-" + secret)],
        [b"AUTH PLAIN " + b64(b"\0" + USER.encode() + b"\0" + secret)],
    ]
    logs.configure("info", "json")
    try:
        replies = [await asyncio.to_thread(session, port, tls_ca, lines) for lines in attempts]
    finally:
        logs.configure("warning", "console")
    err = capsys.readouterr().err
    assert [answer[-1][0] for answer in replies] == [501, 501, 535, 501, 500, 501, 535, 235]
    assert PASSWORD not in err and b64(secret).decode() not in err
    decisions = [
        event
        for event in map(json.loads, err.splitlines())
        if event["event"].startswith(("auth failed:", "login:"))
    ]
    assert [(e["event"].split(",")[0], e.get("reason")) for e in decisions] == [
        ("auth failed: user=<>", "invalid base64"),
        ("auth failed: user=<>", "malformed PLAIN response"),
        (f"auth failed: user=<{USER}>", "authorization identity differs"),
        (f"auth failed: user=<{USER}>", "invalid base64"),
        (f"auth failed: user=<{USER}>", "response line too long"),
        (f"auth failed: user=<{USER}>", "password mismatch"),
        (f"login: user=<{USER}>", None),
    ]
    assert all("rip=127.0.0.1" in e["event"] for e in decisions)


# --- refusals per session ---------------------------------------------------------------------


def refused_flood(port: int, tls_ca) -> list[int]:
    """RCPTs the upstream refuses, until the session ends; the codes of the replies."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=client_context(tls_ca))
        client.login(USER, PASSWORD)
        assert client.docmd("MAIL", "FROM:<a@hostile.test>")[0] == 250
        codes = []
        for i in range(100):
            try:
                codes.append(client.docmd("RCPT", f"TO:<{REFUSED_RECIPIENT_PREFIX}{i}@x.test>")[0])
            except smtplib.SMTPServerDisconnected:
                break
        return codes


async def test_a_session_refused_too_often_is_closed(port, tls_ca, upstream) -> None:
    """Each refused RCPT costs a reservation in PostgreSQL and an upstream command: like
    Postfix (smtpd_hard_error_limit), a session gets max_errors refusals, then 421."""
    codes = await asyncio.to_thread(refused_flood, port, tls_ca)
    assert codes == [550] * 20 + [421]


async def test_recipients_over_the_limit_are_not_counted_as_errors(
    databases, tls_files, motorblock, upstream, tls_ca
) -> None:
    cfg = submission_config(databases, tls_files, upstream[0].port, max_recipients=2)

    def send(port: int) -> list[int]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=client_context(tls_ca))
            client.login(USER, PASSWORD)
            client.docmd("MAIL", "FROM:<a@hostile.test>")
            codes = [client.docmd("RCPT", f"TO:<r{i}@x.test>")[0] for i in range(40)]
            body = b"From: a@hostile.test\r\nSubject: hi\r\n\r\nHello.\r\n"
            return [*codes, client.data(body)[0]]

    async with submission(cfg) as svc:
        codes = await asyncio.to_thread(send, starttls_port(svc))
    assert codes == [250, 250] + [452] * 38 + [250]


# --- smuggling towards the upstream ----------------------------------------------------------


@pytest.mark.parametrize(
    "probe",
    [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"],
    ids=["LF.LF", "CR.CR", "CRLF.LF", "LF.CRLF", "CR.CRLF"],
)
async def test_smuggling_probes_reach_the_upstream_as_one_message(port, tls_ca, upstream, probe):
    """What readers might take for an end of data is relayed inside the one message (the
    relay sends CRLF line ends and stuffs the dot): the upstream never runs the commands."""
    smuggled = (
        b"From: a@hostile.test\r\nSubject: outer\r\n\r\nfirst part"
        + probe
        + b"MAIL FROM:<ceo@bank.test>\r\nRCPT TO:<victim@remote.test>\r\nDATA\r\n"
        b"From: ceo@bank.test\r\n\r\nsmuggled body\r\n"
    )

    def send() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=client_context(tls_ca))
            client.login(USER, PASSWORD)
            client.docmd("MAIL", "FROM:<a@hostile.test>")
            client.docmd("RCPT", "TO:<friend@remote.test>")
            client.send(b"DATA\r\n")
            assert client.getreply()[0] == 354
            client.send(smuggled + b".\r\n")
            return client.getreply()

    assert (await asyncio.to_thread(send))[0] == 250
    [received] = upstream[1].messages
    assert (received.mail_from, received.rcpt_tos) == ("a@hostile.test", ["friend@remote.test"])
    assert b"MAIL FROM:<ceo@bank.test>" in received.content
    assert received.content.endswith(b"smuggled body\r\n")
