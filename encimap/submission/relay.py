"""The upstream MTA, driven in step with the client's transaction (a before-queue proxy).

Each client session has at most one upstream connection, opened at its first MAIL and reused
for later transactions. MAIL, every RCPT and DATA are forwarded as the client sends them, so
the reply the client gets is the upstream's own (per recipient, too): nothing is acknowledged
that the upstream has not accepted, and there is no queue here to lose mail from.

MAIL and RCPT carry the address exactly as the submission parsed it (encimap.smtpaddress):
aiosmtplib's `mail()`/`rcpt()` would parse it again with `email.utils.parseaddr`, which reads
some addresses differently, so the commands are sent through `execute_command` instead.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

from encimap.config import SubmissionConfig, parse_listener


class UpstreamUnavailable(Exception):
    """The upstream could not be reached, dropped the connection or did not answer in time."""


class UpstreamRefused(Exception):
    """The upstream answered with a 4xx/5xx reply; `reply` is passed to the client as is."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RelaySettings:
    host: str
    port: int
    starttls: bool
    username: str
    password: str
    timeout: float
    local_hostname: str
    ca_file: str

    @classmethod
    def from_config(cls, config: SubmissionConfig, local_hostname: str) -> RelaySettings:
        host, port = parse_listener(config.relay)
        password = ""
        if config.relay_password_file:
            password = Path(config.relay_password_file).read_text().strip()
        return cls(
            host=str(host),
            port=int(port),
            starttls=config.relay_starttls,
            username=config.relay_username,
            password=password,
            timeout=config.relay_timeout,
            local_hostname=local_hostname,
            ca_file=config.relay_ca_file,
        )

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file or None)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNAVAILABLE = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError)


class Upstream:
    """One client session's connection to the upstream MTA."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self._client: aiosmtplib.SMTP | None = None

    async def begin(self, sender: str, body_8bit: bool) -> None:
        """MAIL FROM; connects first if needed (once more if a kept connection went stale)."""
        reused = self._client is not None and self._client.is_connected
        try:
            await self._mail(sender, body_8bit)
        except UpstreamUnavailable:
            if not reused:
                raise
            await self.close()
            await self._mail(sender, body_8bit)

    async def recipient(self, address: str) -> None:
        await self._envelope(self._connected(), b"RCPT TO:", address, [], (250, 251))

    async def send(self, message: bytes) -> aiosmtplib.SMTPResponse:
        """DATA; returns the upstream's 250 reply."""
        client = self._connected()
        try:
            return await client.data(message)
        except aiosmtplib.SMTPResponseException as exc:
            raise UpstreamRefused(exc.code, exc.message) from None
        except _UNAVAILABLE as exc:
            await self.close()
            raise UpstreamUnavailable(str(exc)) from exc

    async def reset(self) -> None:
        """Abandon the upstream transaction (RSET); a broken connection is just dropped."""
        if self._client is None or not self._client.is_connected:
            return
        try:
            await self._client.rset()
        except (aiosmtplib.SMTPException, OSError):
            await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        try:
            await client.quit(timeout=min(self.settings.timeout, 5))
        except (aiosmtplib.SMTPException, OSError):
            client.close()

    async def _mail(self, sender: str, body_8bit: bool) -> None:
        client = await self._connect()
        options = [b"BODY=8BITMIME"] if body_8bit and client.supports_extension("8bitmime") else []
        await self._envelope(client, b"MAIL FROM:", sender, options, (250,))

    async def _envelope(
        self,
        client: aiosmtplib.SMTP,
        command: bytes,
        address: str,
        options: list[bytes],
        accepted: tuple[int, ...],
    ) -> None:
        """MAIL or RCPT with `address` between angle brackets, as it is."""
        if _CONTROL.search(address):  # the parser refuses these; never put one on the wire
            raise ValueError(f"control character in address {address!r}")
        verb, keyword = command.split(b" ")
        try:
            response = await client.execute_command(
                verb, keyword + b"<" + address.encode() + b">", *options
            )
        except _UNAVAILABLE as exc:
            await self.close()
            raise UpstreamUnavailable(str(exc)) from exc
        if response.code not in accepted:
            if not client.is_connected:  # 421: the upstream closed the connection
                await self.close()
            raise UpstreamRefused(response.code, response.message)

    async def _connect(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        settings = self.settings
        client = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            local_hostname=settings.local_hostname,
            timeout=settings.timeout,
            start_tls=settings.starttls,
            tls_context=settings.tls_context() if settings.starttls else None,
            username=settings.username or None,
            password=settings.password or None,
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Whatever the reason (down, refusing us, our relay login rejected), it is the
            # upstream's problem, not the client's: a temporary failure it may retry.
            client.close()
            raise UpstreamUnavailable(str(exc)) from exc
        self._client = client
        return client

    def _connected(self) -> aiosmtplib.SMTP:
        if self._client is None or not self._client.is_connected:
            raise UpstreamUnavailable("upstream connection lost")
        return self._client
