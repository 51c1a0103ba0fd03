"""Shared by the submission tests and the benchmark: an upstream sink, the service in-process,
and smtplib clients (run in threads so the server keeps running on the test's loop)."""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller

from encimap.config import Config
from encimap.pgcluster import free_port
from encimap.service import Runtime
from encimap.submission.service import SubmissionService, start
from tests.support import make_config

REFUSED_RECIPIENT_PREFIX = "refuse"
REJECTED_SUBJECT = b"Subject: reject me"
DROPPED_SUBJECT = b"Subject: drop me"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


@dataclass
class SinkHandler:
    """The upstream MTA of the tests: refuses some recipients and some messages on purpose."""

    messages: list[Received] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, options) -> str:
        if address.startswith(REFUSED_RECIPIENT_PREFIX):
            return "550 5.1.1 No such user here (test upstream)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        if REJECTED_SUBJECT in envelope.original_content:
            return "554 5.6.0 Message refused by test upstream"
        if DROPPED_SUBJECT in envelope.original_content:
            server.transport.close()  # gone before the final reply: outcome unknown upstream
            return "421 4.3.0 closing"
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        return "250 2.0.0 Ok: queued as TESTQ"


@contextlib.contextmanager
def sink(**controller_args: Any):
    handler = SinkHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **controller_args)
    controller.start()
    try:
        yield controller, handler
    finally:
        controller.stop()


@contextlib.asynccontextmanager
async def submission(config: Config) -> AsyncIterator[SubmissionService]:
    async with AsyncExitStack() as stack:
        runtime = Runtime(config, stack)
        service = await start(runtime)
        try:
            yield service
        finally:
            await service.close()
            await service.drain(2.0)


def submission_config(databases, tls_files, upstream_port: int, **keys: Any) -> Config:
    """Submission on a free loopback port relaying to the test upstream on `upstream_port`."""
    values = {"listen": "127.0.0.1:0", "relay": f"127.0.0.1:{upstream_port}", "relay_timeout": 5.0}
    return make_config(databases, tls_files, submission={**values, **keys})


def starttls_port(service: SubmissionService) -> int:
    return service.addresses[0][1]


def client_context(tls_ca) -> ssl.SSLContext:
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    return context


def login(port: int, tls_ca, username: str, password: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.starttls(context=client_context(tls_ca))
    client.login(username, password)
    return client


def message(sender: str, recipients: list[str], subject: str = "hello", body: str = "") -> bytes:
    text = (
        f"From: Sender <{sender}>\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
        f"Message-ID: <test@example.test>\r\n\r\n{body or 'Hello there.'}\r\n"
    )
    return text.encode()
