"""Submission on 2587 end to end: real PostgreSQL, real TLS, smtplib and swaks as clients, an
aiosmtpd sink as the upstream MTA."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
import shutil
import smtplib
import socket

import pytest
from aiosmtpd.controller import Controller

from encimap import metrics
from encimap.pgcluster import free_port
from encimap.store import credentials
from tests.submission_helpers import (
    REFUSED_RECIPIENT_PREFIX,
    SinkHandler,
    client_context,
    login,
    message,
    starttls_port,
    submission,
    submission_config,
)
from tests.support import make_motorblock, make_vaultbox

MB_USER, MB_PASS, MB_DOMAIN = "mb-sub", "mb-secret-1", "mb.test"
VB_ADDRESS, VB_PASS = "alice@vb.test", "vb-secret-1"


@pytest.fixture(scope="module")
def accounts(databases):
    async def create():
        await make_motorblock(databases, username=MB_USER, password=MB_PASS, domain=MB_DOMAIN)
        return await make_vaultbox(databases, VB_ADDRESS, password=VB_PASS)

    return {"vaultbox": asyncio.run(create())}


@pytest.fixture
async def service(databases, tls_files, accounts, upstream):
    controller, _ = upstream
    async with submission(submission_config(databases, tls_files, controller.port)) as svc:
        yield svc


async def in_thread(function, *args):
    return await asyncio.to_thread(function, *args)


async def counted(databases, key_prefix: str) -> int:
    conn = await databases.connect()
    try:
        return await conn.fetchval(
            "SELECT coalesce(sum(count), 0) FROM send_counters WHERE principal_key LIKE $1",
            key_prefix + "%",
        )
    finally:
        await conn.close()


# --- sending ---------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["motorblock", "vaultbox"])
async def test_authenticated_send_reaches_upstream_with_trace(
    service, accounts, upstream, tls_ca, who
):
    _, sink_handler = upstream
    box = accounts["vaultbox"]
    username, password, sender = (
        (MB_USER, MB_PASS, f"news@{MB_DOMAIN}")
        if who == "motorblock"
        else (box.username, VB_PASS, VB_ADDRESS)
    )
    original = message(sender, ["bob@elsewhere.test"])

    def send():
        with login(starttls_port(service), tls_ca, username, password) as client:
            return client.sendmail(sender, ["bob@elsewhere.test"], original)

    refused = await in_thread(send)
    assert refused == {}
    [received] = sink_handler.messages
    assert received.mail_from == sender
    assert received.rcpt_tos == ["bob@elsewhere.test"]
    assert received.content.endswith(original)
    trace = received.content[: -len(original)].decode()
    kind = "motorblock" if who == "motorblock" else "vaultbox_smtp"
    assert trace.startswith("Received: from ")
    assert "with ESMTPSA id " in trace and f"authenticated as {kind}" in trace
    assert f"X-Encimap-Auth: kind={kind};" in trace
    assert password not in trace and username not in trace


async def test_implicit_tls_listener(databases, tls_files, accounts, upstream, tls_ca):
    controller, sink_handler = upstream
    port = free_port()
    cfg = submission_config(databases, tls_files, controller.port, tls_listen=f"127.0.0.1:{port}")
    async with submission(cfg):

        def send():
            context = client_context(tls_ca)
            with smtplib.SMTP_SSL("127.0.0.1", port, context=context, timeout=10) as client:
                client.ehlo()
                assert "starttls" not in client.esmtp_features
                assert client.docmd("STARTTLS") == (454, b"4.7.0 TLS not available")
                client.login(MB_USER, MB_PASS)
                client.sendmail(
                    f"a@{MB_DOMAIN}", ["x@y.test"], message(f"a@{MB_DOMAIN}", ["x@y.test"])
                )

        await in_thread(send)
    assert len(sink_handler.messages) == 1


# --- TLS and AUTH rules ----------------------------------------------------------------------


async def test_no_auth_before_starttls_and_no_plaintext_mail(service, upstream):
    def probe():
        with smtplib.SMTP("127.0.0.1", starttls_port(service), timeout=10) as client:
            client.ehlo()
            features = dict(client.esmtp_features)
            auth = client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0u\0p").decode())
            mail = client.docmd("MAIL", f"FROM:<a@{MB_DOMAIN}>")
            return features, auth, mail

    features, auth, mail = await in_thread(probe)
    assert "starttls" in features and "auth" not in features
    assert auth[0] == 538 and auth[1].startswith(b"5.7.11")
    assert mail[0] == 530
    assert upstream[1].messages == []


async def test_auth_required_after_tls(service, tls_ca):
    def probe():
        with smtplib.SMTP("127.0.0.1", starttls_port(service), timeout=10) as client:
            client.starttls(context=client_context(tls_ca))
            client.ehlo()
            features = dict(client.esmtp_features)
            again = client.docmd("STARTTLS")
            syntax = client.docmd("STARTTLS", "now")
            return features, again, syntax, client.docmd("MAIL", "FROM:<a@b.test>")

    features, again, syntax, mail = await in_thread(probe)
    assert set(features["auth"].split()) == {"PLAIN", "LOGIN"}
    assert "starttls" not in features
    assert again == (554, b"5.5.1 Error: TLS already active")
    assert syntax == (501, b"5.5.4 Syntax: STARTTLS")
    assert mail[0] == 530 and b"Authentication required" in mail[1]


ENHANCED_CODE = re.compile(rb"[245]\.\d{1,3}\.\d{1,3}(?: |$)")


async def test_every_reply_carries_an_enhanced_status_code(service, upstream, tls_ca):
    """RFC 2034: once ENHANCEDSTATUSCODES is announced, every reply but the greeting and the EHLO
    keywords carries a code: aiosmtpd's own replies and upstream ones without a code too."""
    sender = f"a@{MB_DOMAIN}"
    commands = [
        ("NOOP", ""),
        ("HELP", ""),
        ("VRFY", "someone"),
        ("FROBNICATE", ""),
        ("EHLO", ""),
        ("MAIL", ""),
        ("RCPT", "TO:<ok@x.test>"),
        ("DATA", ""),
        ("MAIL", f"FROM:<{sender}>"),
        ("RCPT", "TO:<ok@x.test>"),  # the upstream's "250 OK", passed through
        ("RCPT", f"TO:<{REFUSED_RECIPIENT_PREFIX}@x.test>"),
        ("RSET", ""),
    ]

    def exchange():
        with smtplib.SMTP("127.0.0.1", starttls_port(service), timeout=10) as client:
            client.ehlo()
            before_tls = [client.docmd("MAIL", f"FROM:<{sender}>"), client.docmd("NOOP")]
            client.starttls(context=client_context(tls_ca))
            client.ehlo()
            features = dict(client.esmtp_features)
            client.login(MB_USER, MB_PASS)
            replies = [client.docmd(verb, argument) for verb, argument in commands]
            return features, before_tls + replies + [client.docmd("QUIT")]

    features, replies = await in_thread(exchange)
    assert "enhancedstatuscodes" in features
    assert [code // 100 for code, _ in replies] == [5, 2, 2, 2, 5, 5, 5, 5, 5, 5, 2, 2, 5, 2, 2]
    unmarked = [
        (code, line)
        for code, text in replies
        for line in text.split(b"\n")
        if not ENHANCED_CODE.match(line)
    ]
    assert unmarked == []


async def test_plaintext_pipelined_after_starttls_is_discarded(service, tls_ca):
    """RFC 3207 4.2 (CVE-2011-0411 style injection): a command sent in clear behind STARTTLS
    must not be executed inside the TLS session."""

    def probe() -> list[bytes]:
        with socket.create_connection(("127.0.0.1", starttls_port(service)), timeout=10) as raw:
            stream = raw.makefile("rb")
            stream.readline()  # greeting
            raw.sendall(b"EHLO probe.test\r\n")
            while not stream.readline().startswith(b"250 "):
                pass
            raw.sendall(b"STARTTLS\r\nNOOP injected\r\n")
            assert stream.readline() == b"220 2.0.0 Ready to start TLS\r\n"
            with client_context(tls_ca).wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"RSET\r\nQUIT\r\n")
                replies = b""
                while data := tls.recv(4096):
                    replies += data
                return replies.splitlines()

    replies = await in_thread(probe)
    assert [line[:3] for line in replies] == [b"250", b"221"]


async def test_wrong_password_is_535(service, tls_ca):
    def attempt():
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            login(starttls_port(service), tls_ca, MB_USER, "wrong")
        return failure.value.smtp_code, failure.value.smtp_error

    code, text = await in_thread(attempt)
    assert code == 535 and text.startswith(b"5.7.8")


async def test_revoked_and_disabled_credentials_are_535(databases, service, tls_ca):
    box = await make_vaultbox(databases, "revoked@vb.test", password="pw-revoked")
    await make_motorblock(databases, username="mb-off", password="pw-off", domain="off.test")
    conn = await databases.connect()
    try:
        await credentials.revoke_credentials(conn, box.username)
    finally:
        await conn.close()
    motorical = await databases.connect("motorical")
    try:
        await motorical.execute(
            "UPDATE motor_blocks SET smtp_enabled = false WHERE username = $1", "mb-off"
        )
    finally:
        await motorical.close()

    for username, password in ((box.username, "pw-revoked"), ("mb-off", "pw-off")):
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            await in_thread(login, starttls_port(service), tls_ca, username, password)
        assert failure.value.smtp_code == 535


async def test_sender_must_belong_to_principal(service, accounts, upstream, tls_ca):
    box = accounts["vaultbox"]

    def attempts():
        with login(starttls_port(service), tls_ca, box.username, VB_PASS) as client:
            other = client.docmd("MAIL", "FROM:<mallory@vb.test>")
            client.rset()
            null = client.docmd("MAIL", "FROM:<>")
            client.rset()
            assert client.docmd("MAIL", f"FROM:<{VB_ADDRESS.upper()}>")[0] == 250
            assert client.docmd("RCPT", "TO:<bob@elsewhere.test>")[0] == 250
            forged = client.data(message("ceo@vb.test", ["bob@elsewhere.test"]))
            return other, null, forged

    other, null, forged = await in_thread(attempts)
    assert other[0] == 553 and other[1].startswith(b"5.7.1")
    assert null[0] == 553
    assert forged[0] == 553
    assert upstream[1].messages == []


async def test_motorblock_may_use_any_address_of_its_domain_only(service, tls_ca):
    def attempts():
        with login(starttls_port(service), tls_ca, MB_USER, MB_PASS) as client:
            inside = client.docmd("MAIL", f"FROM:<anyone@{MB_DOMAIN}>")
            client.rset()
            outside = client.docmd("MAIL", f"FROM:<anyone@sub.{MB_DOMAIN}>")
            return inside[0], outside[0]

    assert await in_thread(attempts) == (250, 553)


async def test_forged_trace_header_is_dropped(service, upstream, tls_ca):
    sender = f"a@{MB_DOMAIN}"
    forged = b"X-Encimap-Auth: kind=vaultbox_smtp;\r\n\tuser-id=forged\r\n" + message(
        sender, ["b@c.test"]
    )

    def send():
        with login(starttls_port(service), tls_ca, MB_USER, MB_PASS) as client:
            client.sendmail(sender, ["b@c.test"], forged)

    await in_thread(send)
    content = upstream[1].messages[0].content
    assert b"forged" not in content
    assert content.count(b"X-Encimap-Auth:") == 1
    assert content.endswith(message(sender, ["b@c.test"]))


async def test_limits_on_recipients_and_size(databases, tls_files, accounts, upstream, tls_ca):
    controller, sink_handler = upstream
    cfg = submission_config(
        databases, tls_files, controller.port, max_recipients=2, max_message_size=2000
    )
    sender = f"a@{MB_DOMAIN}"
    async with submission(cfg) as svc:

        def attempts():
            with login(starttls_port(svc), tls_ca, MB_USER, MB_PASS) as client:
                size = client.esmtp_features.get("size")
                client.docmd("MAIL", f"FROM:<{sender}>")
                codes = [client.docmd("RCPT", f"TO:<r{i}@x.test>")[0] for i in range(3)]
                client.rset()
                big = message(sender, ["r@x.test"], body="x" * 3000)
                with pytest.raises(smtplib.SMTPException) as oversize:
                    client.sendmail(sender, ["r@x.test"], big)
                return size, codes, oversize.value

        size, codes, oversize = await in_thread(attempts)
    assert size == "2000"
    assert codes == [250, 250, 452]
    assert "552" in str(oversize)
    assert sink_handler.messages == []


# --- upstream behaviour ---------------------------------------------------------------------


async def test_upstream_down_is_451_and_uses_no_quota(databases, tls_files, accounts, tls_ca):
    dead_port = free_port()
    cfg = submission_config(databases, tls_files, dead_port, relay_timeout=2.0)
    async with submission(cfg) as svc:

        def attempt():
            with login(starttls_port(svc), tls_ca, MB_USER, MB_PASS) as client:
                return client.docmd("MAIL", f"FROM:<a@{MB_DOMAIN}>")

        before = await counted(databases, "motorblock:")
        code, text = await in_thread(attempt)
    assert code == 451 and text.startswith(b"4.4.1")
    assert await counted(databases, "motorblock:") == before


async def test_upstream_refusals_pass_through_and_release_quota(
    databases, service, upstream, tls_ca
):
    sender = f"a@{MB_DOMAIN}"
    before = await counted(databases, "motorblock:")

    def attempts():
        with login(starttls_port(service), tls_ca, MB_USER, MB_PASS) as client:
            client.docmd("MAIL", f"FROM:<{sender}>")
            refused = client.docmd("RCPT", f"TO:<{REFUSED_RECIPIENT_PREFIX}@x.test>")
            accepted = client.docmd("RCPT", "TO:<ok@x.test>")
            data = client.data(message(sender, ["ok@x.test"], subject="reject me"))
            return refused, accepted, data

    refused, accepted, data = await in_thread(attempts)
    assert refused == (550, b"5.1.1 No such user here (test upstream)")
    assert accepted[0] == 250
    assert data == (554, b"5.6.0 Message refused by test upstream")
    assert upstream[1].messages == []
    assert await counted(databases, "motorblock:") == before


async def test_upstream_dropping_mid_session_gives_451_then_recovers(
    databases, tls_files, accounts, tls_ca
):
    sender = f"a@{MB_DOMAIN}"
    handler = SinkHandler()
    port = free_port()
    first = Controller(handler, hostname="127.0.0.1", port=port)
    first.start()
    cfg = submission_config(databases, tls_files, port, relay_timeout=2.0)
    async with submission(cfg) as svc:
        client = await in_thread(login, starttls_port(svc), tls_ca, MB_USER, MB_PASS)
        try:
            await in_thread(client.sendmail, sender, ["a@x.test"], message(sender, ["a@x.test"]))
            first.stop()
            code, _ = await in_thread(client.docmd, "MAIL", f"FROM:<{sender}>")
            assert code == 451
            await in_thread(client.rset)
            second = Controller(handler, hostname="127.0.0.1", port=port)
            second.start()
            try:
                message_b = message(sender, ["b@x.test"])
                await in_thread(client.sendmail, sender, ["b@x.test"], message_b)
            finally:
                second.stop()
        finally:
            client.close()
    assert [m.rcpt_tos for m in handler.messages] == [["a@x.test"], ["b@x.test"]]


def relayed(result: str) -> float:
    value = metrics.REGISTRY.get_sample_value("encimap_relayed_messages_total", {"result": result})
    return value or 0.0


async def test_relayed_metric_counts_each_message_handed_upstream(service, tls_ca):
    sender = f"a@{MB_DOMAIN}"
    results = ("ok", "rejected", "tempfail")
    before = {result: relayed(result) for result in results}

    def send(subject: str) -> int:
        with login(starttls_port(service), tls_ca, MB_USER, MB_PASS) as client:
            client.docmd("MAIL", f"FROM:<{sender}>")
            client.docmd("RCPT", "TO:<ok@x.test>")
            return client.data(message(sender, ["ok@x.test"], subject=subject))[0]

    assert await in_thread(send, "fine") == 250
    assert {r: relayed(r) - before[r] for r in results} == {"ok": 1, "rejected": 0, "tempfail": 0}
    assert await in_thread(send, "reject me") == 554
    assert await in_thread(send, "drop me") == 451
    assert {r: relayed(r) - before[r] for r in results} == {"ok": 1, "rejected": 1, "tempfail": 1}

    def refused_by_us() -> int:  # the From: check refuses before anything goes upstream
        with login(starttls_port(service), tls_ca, MB_USER, MB_PASS) as client:
            client.docmd("MAIL", f"FROM:<{sender}>")
            client.docmd("RCPT", "TO:<ok@x.test>")
            return client.data(message("x@other.test", ["ok@x.test"]))[0]

    assert await in_thread(refused_by_us) == 553
    assert {r: relayed(r) - before[r] for r in results} == {"ok": 1, "rejected": 1, "tempfail": 1}


# --- TLS reload -----------------------------------------------------------------------------


async def test_sighup_reload_new_certificate_keeps_sessions(
    databases, tls_files, accounts, upstream, tls_ca, tmp_path
):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(tls_files[0], cert)
    shutil.copy(tls_files[1], key)
    cfg = submission_config(databases, tls_files, upstream[0].port)
    cfg = dataclasses.replace(cfg, tls=dataclasses.replace(cfg.tls, cert=str(cert), key=str(key)))
    sender = f"a@{MB_DOMAIN}"
    async with submission(cfg) as svc:
        old_client = await in_thread(login, starttls_port(svc), tls_ca, MB_USER, MB_PASS)
        try:
            renewed = tls_ca.issue_cert("localhost", "127.0.0.1", common_name="renewed")
            renewed.private_key_pem.write_to_path(str(key))
            cert.write_bytes(b"".join(blob.bytes() for blob in renewed.cert_chain_pems))
            svc.runtime.reload()
            new_client = await in_thread(login, starttls_port(svc), tls_ca, MB_USER, MB_PASS)
            with new_client:
                subject = dict(x[0] for x in new_client.sock.getpeercert()["subject"])
            assert subject["commonName"] == "renewed"
            await in_thread(
                old_client.sendmail, sender, ["r@x.test"], message(sender, ["r@x.test"])
            )
        finally:
            old_client.close()
    assert len(upstream[1].messages) == 1


# --- an independent client ------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_swaks(service, upstream, mechanism, ca_file, tmp_path):
    process = await asyncio.create_subprocess_exec(
        "swaks",
        "--server",
        "127.0.0.1",
        "--port",
        str(starttls_port(service)),
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        str(ca_file),
        "--auth",
        mechanism,
        "--auth-user",
        MB_USER,
        "--auth-password",
        MB_PASS,
        "--from",
        f"swaks@{MB_DOMAIN}",
        "--to",
        "rcpt@elsewhere.test",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, output.decode()
    [received] = upstream[1].messages
    assert received.mail_from == f"swaks@{MB_DOMAIN}"
    assert b"X-Encimap-Auth: kind=motorblock;" in received.content
