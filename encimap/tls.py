"""Server TLS contexts from `[tls]`, re-readable on SIGHUP without dropping sessions.

Listeners ask `TLSMaterial.context` for every new connection (or STARTTLS), so a reload takes
effect for new handshakes while established sessions keep the context they started with.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from encimap.config import TLSConfig

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TLSError(Exception):
    pass


def server_context(config: TLSConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = _VERSIONS[config.minimum_version]
    try:
        context.load_cert_chain(config.cert, config.key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"tls: cannot load {config.cert} / {config.key}: {exc}") from exc
    # No TLS 1.3 session tickets. OpenSSL sends two right after the handshake, and a client
    # that reads and writes one TLS connection from two threads (imaplib2, so offlineimap)
    # then fails at random after STARTTLS (its first command unanswered or an EOF). Resuming
    # saves one handshake per reconnect, and worker processes do not share ticket keys.
    context.num_tickets = 0
    return context


class TLSMaterial:
    def __init__(self, config: TLSConfig) -> None:
        self.config = config
        self.context = server_context(config)

    def reload(self) -> None:
        """Load the files again; on error keep serving with the previous context."""
        self.context = server_context(self.config)

    def listener_context(self) -> ssl.SSLContext:
        """A context for implicit-TLS listeners that follows reloads.

        A listening socket keeps the context it was created with; this one switches every new
        handshake to the material loaded last (OpenSSL calls the SNI callback for every
        ClientHello, with or without a server name), so established sessions keep theirs.
        """
        front = server_context(self.config)

        def use_current(ssl_object: ssl.SSLObject, _name: str | None, _ctx: object) -> None:
            ssl_object.context = self.context

        front.sni_callback = use_current  # type: ignore[assignment]
        return front


def write_self_signed(directory: Path, hostname: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for the demo (`encimap dev`); never for production."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
