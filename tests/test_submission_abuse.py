"""Submission against a hostile client: envelope and From: spoofing, AUTH as someone else,
the hourly limit and a client that hangs up after the final dot. Real PostgreSQL, real TLS,
the aiosmtpd sink as the upstream."""

from __future__ import annotations

import asyncio
import base64
import smtplib

import pytest

from encimap.store import sending
from tests.submission_helpers import (
    client_context,
    login,
    message,
    starttls_port,
    submission,
    submission_config,
)
from tests.support import make_motorblock

USER, PASSWORD, DOMAIN = "mb-abuse", "abuse-pw-1", "abuse.test"
LIMITED_USER, LIMIT = "mb-abuse-limited", 3
SENDER = f"news@{DOMAIN}"


@pytest.fixture(scope="module")
def motorblocks(databases):
    async def create():
        first = await make_motorblock(databases, username=USER, password=PASSWORD, domain=DOMAIN)
        limited = await make_motorblock(
            databases, username=LIMITED_USER, password=PASSWORD, domain=DOMAIN, rate_limit=LIMIT
        )
        return first, limited

    return asyncio.run(create())


@pytest.fixture
async def service(databases, tls_files, motorblocks, upstream):
    async with submission(submission_config(databases, tls_files, upstream[0].port)) as svc:
        yield svc


def raw(client: smtplib.SMTP, line: bytes) -> tuple[int, bytes]:
    """A command sent as bytes (smtplib refuses CR and LF in arguments)."""
    client.send(line + b"\r\n")
    return client.getreply()


async def sent(databases, motorblock) -> int:
    conn = await databases.connect()
    try:
        return await sending.sent_in_window(conn, f"motorblock:{motorblock.id}")
    finally:
        await conn.close()


# --- envelope addresses ----------------------------------------------------------------------


async def test_bare_cr_in_quoted_local_parts_is_refused(service, upstream, tls_ca):
    """Issue 14 #1: the upstream received MAIL FROM:<ceo@bank.test> for this."""

    def attempts():
        with login(starttls_port(service), tls_ca, USER, PASSWORD) as client:
            spoof = raw(client, f'MAIL FROM:<"x\rSPOOF <ceo@bank.test>"@{DOMAIN}>'.encode())
            assert client.docmd("MAIL", f"FROM:<{SENDER}>")[0] == 250
            hidden = raw(client, b'RCPT TO:<"y\r <hidden-victim@remote.test>"@remote.test>')
            nul = raw(client, b"RCPT TO:<a\x00b@remote.test>")
            null = client.docmd("RCPT", "TO:<>")
            return spoof, hidden, nul, null

    spoof, hidden, nul, null = await asyncio.to_thread(attempts)
    assert spoof == (501, b"5.1.7 Bad sender address syntax")
    assert hidden == nul == null == (501, b"5.1.3 Bad recipient address syntax")
    assert upstream[1].messages == []


async def test_the_upstream_gets_exactly_the_address_that_was_checked(service, upstream, tls_ca):
    quoted = f'"a b"@{DOMAIN}'

    def send():
        with login(starttls_port(service), tls_ca, USER, PASSWORD) as client:
            assert client.docmd("MAIL", f'FROM:<"a b"@{DOMAIN}>')[0] == 250
            assert client.docmd("RCPT", 'TO:<"news"@elsewhere.test>')[0] == 250
            assert client.data(message(SENDER, ["news@elsewhere.test"]))[0] == 250

    await asyncio.to_thread(send)
    [received] = upstream[1].messages
    assert received.mail_from == quoted
    assert received.rcpt_tos == ["news@elsewhere.test"]  # canonical: no needless quotes


async def test_auth_plain_as_someone_else_is_refused(service, motorblocks, tls_ca):
    """Issue 14 #11: an authorization identity other than the login is not honoured."""

    def plain(authzid: bytes) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", starttls_port(service), timeout=10) as client:
            client.starttls(context=client_context(tls_ca))
            client.ehlo()
            blob = base64.b64encode(authzid + b"\0" + USER.encode() + b"\0" + PASSWORD.encode())
            return client.docmd("AUTH", "PLAIN " + blob.decode())

    other, same, empty = await asyncio.gather(
        asyncio.to_thread(plain, b"someone-else"),
        asyncio.to_thread(plain, USER.encode()),
        asyncio.to_thread(plain, b""),
    )
    assert other == (535, b"5.7.8 Authentication credentials invalid")
    assert same[0] == empty[0] == 235


# --- the From: header ------------------------------------------------------------------------

OWN_FROM = f"From: Sender <{SENDER}>\r\n".encode()
REST = b"To: bob@elsewhere.test\r\nSubject: hi\r\n\r\nHello.\r\n"


def submit(service, tls_ca, content: bytes) -> tuple[int, bytes]:
    """One message from SENDER to bob@elsewhere.test; the reply to its DATA."""
    with login(starttls_port(service), tls_ca, USER, PASSWORD) as client:
        client.docmd("MAIL", f"FROM:<{SENDER}>")
        client.docmd("RCPT", "TO:<bob@elsewhere.test>")
        return client.data(content)


@pytest.mark.parametrize(
    "header",
    [
        OWN_FROM + b"From : ceo@bank.test\r\n",  # obsolete: whitespace before the colon
        OWN_FROM + b"not a header line\r\nFrom: ceo@bank.test\r\n",
        OWN_FROM + b"X-Note: a\nFrom: ceo@bank.test\r\n",  # bare LF inside the header block
        OWN_FROM + b"X-Note: a\rFrom: ceo@bank.test\r\n",  # bare CR
        b" folded before any field\r\n" + OWN_FROM,
        OWN_FROM + b"X-Encimap-Auth : kind=vaultbox_smtp; user-id=forged\r\n",
    ],
)
async def test_header_blocks_read_two_ways_are_refused(service, upstream, tls_ca, header):
    """Issue 14 #4: each of these was relayed with 250, and a reader saw ceo@bank.test."""
    code, text = await asyncio.to_thread(submit, service, tls_ca, header + REST)
    assert code == 554 and text.startswith(b"5.6.0 Malformed message header"), text
    assert upstream[1].messages == []


@pytest.mark.parametrize(
    "header",
    [
        OWN_FROM + b"From: ceo@bank.test\r\n",  # a second From: field, well formed
        b"From: " + SENDER.encode() + b" <ceo@bank.test>\r\n",  # one field read two ways
        b"From: " + b"(" * 900 + SENDER.encode() + b"\r\n",
        b"From: g:;" + SENDER.encode() + b"\r\n",  # the email package: AttributeError (451)
    ],
)
async def test_from_fields_that_are_not_exactly_one_owned_address_are_refused(
    service, upstream, tls_ca, header
):
    code, text = await asyncio.to_thread(submit, service, tls_ca, header + REST)
    assert code == 553 and text.startswith(b"5.7.1"), text
    assert upstream[1].messages == []


async def test_forged_trace_header_in_any_case_is_dropped(service, upstream, tls_ca):
    forged = b"x-encimap-AUTH: kind=vaultbox_smtp;\r\n\tuser-id=forged\r\n" + OWN_FROM + REST

    def send():
        with login(starttls_port(service), tls_ca, USER, PASSWORD) as client:
            client.sendmail(SENDER, ["bob@elsewhere.test"], forged)

    await asyncio.to_thread(send)
    [received] = upstream[1].messages
    assert b"forged" not in received.content
    assert received.content.lower().count(b"x-encimap-auth") == 1


# --- the hourly limit ------------------------------------------------------------------------


async def test_hanging_up_after_the_final_dot_spends_the_reservations(
    databases, service, upstream, motorblocks, tls_ca
):
    """Issue 14 #5: closing right after the dot gave the reservations back while the message
    was still relayed (6 x 50 recipients went out on a limit of 100)."""
    limited = motorblocks[1]
    recipients = [f"r{i}@elsewhere.test" for i in range(LIMIT)]
    before = await sent(databases, limited)
    assert before == 0

    def send_and_hang_up():
        client = login(starttls_port(service), tls_ca, LIMITED_USER, PASSWORD)
        assert client.docmd("MAIL", f"FROM:<{SENDER}>")[0] == 250
        for recipient in recipients:
            assert client.docmd("RCPT", f"TO:<{recipient}>")[0] == 250
        assert client.docmd("DATA")[0] == 354
        client.send(message(SENDER, recipients) + b".\r\n")
        client.close()  # no wait for the reply

    await asyncio.to_thread(send_and_hang_up)
    for _ in range(200):  # until the session has ended on the server side
        if upstream[1].messages and not len(service.sessions):
            break
        await asyncio.sleep(0.05)
    assert [m.rcpt_tos for m in upstream[1].messages] == [recipients]
    assert await sent(databases, limited) == LIMIT

    def one_more():
        with login(starttls_port(service), tls_ca, LIMITED_USER, PASSWORD) as client:
            client.docmd("MAIL", f"FROM:<{SENDER}>")
            return client.docmd("RCPT", "TO:<late@elsewhere.test>")

    code, text = await asyncio.to_thread(one_more)
    assert code == 451 and text.startswith(b"4.7.0 Hourly sending limit")


async def test_refused_recipients_keep_no_reservation(databases, service, motorblocks, tls_ca):
    first = motorblocks[0]
    before = await sent(databases, first)

    def attempts():
        with login(starttls_port(service), tls_ca, USER, PASSWORD) as client:
            client.docmd("MAIL", f"FROM:<{SENDER}>")
            return [
                raw(client, b"RCPT TO:<a\x00b@elsewhere.test>")[0],
                raw(client, b'RCPT TO:<"a\rb"@elsewhere.test>')[0],
                client.docmd("RCPT", "TO:<refuse-me@elsewhere.test>")[0],  # the upstream's 550
            ]

    assert await asyncio.to_thread(attempts) == [501, 501, 550]
    assert await sent(databases, first) == before
