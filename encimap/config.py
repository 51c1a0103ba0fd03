"""Configuration: TOML file, defaults, environment overrides and validation.

Every section is a frozen dataclass; the loader walks the dataclass fields, so a key that is not
declared here is an error, and a value of the wrong type names its key. `config.example.toml`
documents the same keys with the same defaults (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encimap.smime.certificates import PREPARED_CERTIFICATES

ENV_CONFIG = "ENCIMAP_CONFIG"
ENV_MOTORICAL_URL = "MOTORICAL_DATABASE_URL"
ENV_ENCIMAP_URL = "ENCIMAP_DATABASE_URL"


class ConfigError(Exception):
    """A bad configuration file or value; the message names the key."""


@dataclass(frozen=True)
class DatabaseConfig:
    motorical_url: str = "postgresql://motorical@localhost/motorical_db"
    encimap_url: str = "postgresql://encimap@localhost/motorical_encrypted_imap"
    pool_min_size: int = 1
    pool_max_size: int = 10
    connect_timeout: float = 5.0
    command_timeout: float = 10.0
    idle_timeout: float = 300.0
    application_name: str = "encimap"
    # Each service switches to its least-privilege role (encimap_auth, encimap_intake, ...)
    # after connecting, so one login user serves all daemons with the rights each one needs.
    set_role: bool = True
    # Files holding the passwords of the two URLs (systemd LoadCredential= puts them in
    # $CREDENTIALS_DIRECTORY; a relative name is looked up there).
    motorical_password_file: str = ""
    encimap_password_file: str = ""
    # Direct URLs for the LISTEN connections (auth cache, recipient cache, IMAP events) when
    # the URLs above go through a pooler that cannot carry LISTEN/NOTIFY (PgBouncer in
    # transaction mode). "" = the URL above.
    motorical_listen_url: str = ""
    encimap_listen_url: str = ""
    # asyncpg's prepared-statement cache per connection; 0 behind PgBouncer in transaction
    # mode (before 1.21 it cannot keep named prepared statements apart between clients).
    statement_cache_size: int = 100
    # Where the auth engine reads credentials on a multi-host URL: "" = as the URL says (the
    # primary), "prefer-standby" or "standby" to serve logins from standbys. A revocation then
    # takes effect once the standby has replayed it. LISTEN still goes to the primary.
    logins_session_attrs: str = ""


@dataclass(frozen=True)
class TLSConfig:
    cert: str = "/etc/encimap/tls/fullchain.pem"
    key: str = "/etc/encimap/tls/privkey.pem"
    minimum_version: str = "TLSv1.2"


@dataclass(frozen=True)
class SMIMEConfig:
    # Replace the outer Subject with "[...]" (RFC 9788); a vaultbox's limits may override.
    hide_subject: bool = True
    # Default content encryption profile for vaultboxes that do not choose one.
    default_profile: str = "aes256-cbc"
    # Accept a certificate whose email address differs from the vaultbox address.
    allow_address_mismatch: bool = False


@dataclass(frozen=True)
class IntakeConfig:
    listen: str | list[str] = "127.0.0.1:2424"
    protocol: str = "lmtp"
    hostname: str = ""
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 100
    recipient_delimiter: str = "+"
    # What to answer for a vaultbox without a usable certificate: "tempfail" (451 4.7.1)
    # or "reject" (550 5.7.1).
    missing_certificate: str = "tempfail"
    proxy_protocol: bool = False
    workers: int = 1
    duplicate_window_seconds: int = 86400
    # Messages above this size are encrypted in a worker thread, off the event loop.
    offload_threshold: int = 256 * 1024
    timeout: float = 300.0  # seconds for one whole command, from the previous one
    data_timeout: float = 600.0  # seconds from DATA's 354 to the final dot
    # DATA bytes held by all sessions of one process (0 = no limit); beyond, 452 4.3.1.
    max_data_bytes_in_flight: int = 1024 * 1024 * 1024
    # Connection limits (encimap.service.connlimits); 0 = none.
    max_connections: int = 200
    max_connections_per_ip: int = 100
    # RCPT lookups kept between deliveries (dropped at once on any vaultbox or certificate
    # change, announced over LISTEN/NOTIFY); at most this old in any case (a bound only for
    # changes made with triggers disabled), long enough that a vaultbox receiving mail every
    # few minutes is served from the cache. 0 = look up every time.
    recipient_cache_seconds: float = 300.0
    # Addresses (and parsed certificates) kept by those caches; the least recently used go
    # first. Above the number of vaultboxes that receive mail, every repeat RCPT is a hit.
    recipient_cache_size: int = PREPARED_CERTIFICATES


@dataclass(frozen=True)
class SubmissionConfig:
    listen: str | list[str] = "0.0.0.0:2587"
    tls_listen: str | list[str] = ""
    relay: str = "127.0.0.1:10025"
    relay_starttls: bool = False
    relay_username: str = ""
    relay_password_file: str = ""
    # CA bundle that verifies the upstream's certificate with relay_starttls ("" = system CAs).
    relay_ca_file: str = ""
    relay_timeout: float = 60.0
    hostname: str = ""
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 50
    check_from_header: bool = True
    default_hourly_limit: int = 100
    local_delivery: bool = False
    timeout: float = 300.0  # seconds for one whole command, from the previous one
    data_timeout: float = 600.0  # seconds from DATA's 354 to the final dot
    # DATA bytes held by all sessions of one process (0 = no limit); beyond, 452 4.3.1.
    max_data_bytes_in_flight: int = 1024 * 1024 * 1024
    # Refusals (4xx/5xx) one session may get before it is closed (0 = no limit).
    max_errors: int = 20
    # Connection limits (encimap.service.connlimits); 0 = none.
    max_connections: int = 500
    max_connections_per_ip: int = 20
    max_unauthenticated: int = 100
    login_timeout: float = 60.0  # seconds from connecting to a successful AUTH


@dataclass(frozen=True)
class AuthSocketConfig:
    listen: str | list[str] = field(default_factory=lambda: ["unix:/run/encimap/auth"])
    socket_mode: str = "0660"
    socket_owner: str = ""
    socket_group: str = ""
    # Peers that may use a TCP listener of the Dovecot protocol (it believes their rip=); a
    # unix-socket listener is guarded by its file mode instead.
    allowed_peers: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # nginx mail auth_http endpoint ("" disables it).
    http_listen: str = ""
    # Peers that may call it (a unix-socket listener is guarded by its file mode instead).
    http_allowed_peers: list[str] = field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    # File with a shared secret nginx must send in X-Encimap-Secret ("" = none required).
    http_secret_file: str = ""
    # Exempt Client-IP values in [auth] trusted_networks from throttling (nginx names them).
    http_trust_client_networks: bool = False
    imap_upstream: str = "127.0.0.1:1143"
    smtp_upstream: str = "127.0.0.1:2587"
    # Connection limits of the auth protocol listeners (encimap.service.connlimits; per IP on
    # TCP listeners only); 0 = none.
    max_connections: int = 500
    max_connections_per_ip: int = 100


@dataclass(frozen=True)
class IMAPConfig:
    listen: str | list[str] = "0.0.0.0:1143"
    tls_listen: str | list[str] = "0.0.0.0:1993"
    proxy_protocol: bool = False
    # RFC 3501 5.4: an authenticated client may idle at least 30 minutes between commands.
    idle_timeout: float = 1800.0
    # Seconds from connecting to a successful login, in all (every read before login ends
    # by then): an unauthenticated connection cannot be held open longer.
    login_timeout: float = 60.0
    # Seconds in which the rest of a command (its literals and continuation lines) must
    # arrive once its first line has: long enough for the largest APPEND on a slow link.
    command_timeout: float = 600.0
    max_line_length: int = 64 * 1024
    # Largest literal after login: the largest message APPEND takes.
    max_literal_size: int = 50 * 1024 * 1024
    # Largest literal before login (a username or a password); more is answered with
    # `* BYE` and the connection ends, as Dovecot's imap-login does.
    max_literal_before_login: int = 8192
    # Literal bytes held by the commands being read or run in one process, all sessions
    # together (0 = no limit): about 20 APPENDs of `max_literal_size` at once (one user's
    # `max_connections_per_user`). A literal that would pass it is refused before it is sent:
    # `NO [UNAVAILABLE]`, the client may retry.
    max_literal_bytes_in_flight: int = 1024 * 1024 * 1024
    max_connections_per_user: int = 20
    # Folder names a client may create: bytes of the name as sent (modified UTF-7, so a
    # non-ASCII character takes 3-8 bytes), levels of hierarchy, folders per vaultbox.
    max_mailbox_name_length: int = 512
    max_mailbox_depth: int = 16
    max_mailboxes: int = 1000
    # Keys in one SEARCH program (each costs one or two query parameters; PostgreSQL takes
    # at most 32,767 per statement). More is answered NO [LIMIT].
    max_search_keys: int = 1000
    # Parts (TEXT and URL) of the CATENATE messages of one APPEND (RFC 4469): each URL is a
    # read of a stored message. More is answered NO [LIMIT].
    max_catenate_parts: int = 100
    # Messages in one APPEND (RFC 3502 MULTIAPPEND): each is encrypted and stored in one
    # transaction. More is answered NO [LIMIT].
    max_append_messages: int = 1000
    trusted_networks: list[str] = field(default_factory=list)
    # Processes sharing the listening ports (SO_REUSEPORT); one Python process uses one core.
    workers: int = 1
    # Connection limits (encimap.service.connlimits); 0 = none. With several workers,
    # max_connections and max_unauthenticated hold per process (they guard its descriptors
    # and memory); per IP and per user count the connections of all of them.
    max_connections: int = 2000
    max_connections_per_ip: int = 50
    max_unauthenticated: int = 200


@dataclass(frozen=True)
class AuthConfig:
    bcrypt_cost: int = 12
    bcrypt_workers: int = 0  # 0 = number of cores
    bcrypt_queue: int = 64
    cache_ttl: float = 300.0
    cache_size: int = 10000
    negative_cache_ttl: float = 30.0
    # The platform database has no triggers of ours: its cache entries live this long.
    motorical_cache_ttl: float = 30.0
    throttle_base_delay: float = 2.0
    throttle_max_delay: float = 15.0
    throttle_window: float = 900.0
    max_failures_per_ip: int = 0  # 0 = no hard limit
    trusted_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])


@dataclass(frozen=True)
class MetricsConfig:
    # `serve all` uses `listen`; a process serving one component uses that component's key,
    # so the units of one host do not compete for a port. "" turns the endpoint off.
    listen: str = "127.0.0.1:9587"
    intake: str = "127.0.0.1:9588"
    submission: str = "127.0.0.1:9589"
    authsocket: str = "127.0.0.1:9590"
    imap: str = "127.0.0.1:9591"
    wkd: str = ""

    def for_service(self, which: str) -> str:
        return self.listen if which == "all" else getattr(self, which)


@dataclass(frozen=True)
class WKDConfig:
    # Web Key Directory (plain HTTP, behind the domain's HTTPS proxy); "" turns it off.
    listen: str | list[str] = ""
    # Connection limits (encimap.service.connlimits); 0 = none. Behind a proxy every request
    # comes from the proxy's address: raise the per-IP limit to the proxy's share.
    max_connections: int = 200
    max_connections_per_ip: int = 50


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "json"  # "json" or "console"


@dataclass(frozen=True)
class ServiceConfig:
    drain_timeout: float = 30.0
    # "uvloop" (faster; falls back to asyncio if the package is missing) or "asyncio".
    event_loop: str = "uvloop"


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    smime: SMIMEConfig = field(default_factory=SMIMEConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    authsocket: AuthSocketConfig = field(default_factory=AuthSocketConfig)
    imap: IMAPConfig = field(default_factory=IMAPConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    wkd: WKDConfig = field(default_factory=WKDConfig)
    log: LogConfig = field(default_factory=LogConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    source: str = ""


CHOICES: dict[str, tuple[str, ...]] = {
    "database.logins_session_attrs": ("", "prefer-standby", "standby", "any", "primary"),
    "tls.minimum_version": ("TLSv1.2", "TLSv1.3"),
    "smime.default_profile": ("aes256-cbc", "aes128-cbc", "rsa-oaep", "aes256-gcm"),
    "intake.protocol": ("lmtp", "smtp"),
    "intake.missing_certificate": ("tempfail", "reject"),
    "log.level": ("debug", "info", "warning", "error"),
    "log.format": ("json", "console"),
    "service.event_loop": ("uvloop", "asyncio"),
}


# Keys whose value is a list of networks ("192.0.2.0/24", "::1/128", or one address).
NETWORK_LISTS = (
    "auth.trusted_networks",
    "imap.trusted_networks",
    "authsocket.allowed_peers",
    "authsocket.http_allowed_peers",
)


def load(
    path: str | os.PathLike[str] | None = None, *, env: dict[str, str] | None = None
) -> Config:
    """Load the configuration from `path` (or $ENCIMAP_CONFIG), or defaults without a file."""
    env = dict(os.environ) if env is None else env
    path = path or env.get(ENV_CONFIG) or None
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(Path(path))
    config = _build(Config, raw, prefix="")
    overrides = {
        "motorical_url": env.get(ENV_MOTORICAL_URL),
        "encimap_url": env.get(ENV_ENCIMAP_URL),
    }
    database = dataclasses.replace(config.database, **{k: v for k, v in overrides.items() if v})
    return dataclasses.replace(config, database=database, source=str(path or ""))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: configuration file not readable") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _build(cls: type, raw: Any, *, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key")
    values: dict[str, Any] = {}
    for name in fields & raw.keys():
        key = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], prefix=f"{key}.")
        else:
            values[name] = _check_value(key, hint, raw[name])
    built = cls(**values)
    _check_constraints(built, prefix)
    return built


def _check_value(key: str, hint: Any, value: Any) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if typing.get_origin(option) is list:
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            continue
        if isinstance(value, option) and not (option is int and isinstance(value, bool)):
            return value
    wanted = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"{key}: expected {wanted}, got {_type_name(type(value))} {value!r}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return "list of strings"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _check_constraints(section: Any, prefix: str) -> None:
    for f in dataclasses.fields(section):
        key = f"{prefix}{f.name}"
        value = getattr(section, f.name)
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{key}: must be one of {', '.join(CHOICES[key])}, got {value!r}")
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value!r}")
        if key in NETWORK_LISTS:
            for network in value:
                try:
                    ipaddress.ip_network(network, strict=False)
                except ValueError:
                    raise ConfigError(f"{key}: not a network: {network!r}") from None
    if prefix == "auth." and not 4 <= section.bcrypt_cost <= 31:
        raise ConfigError(f"auth.bcrypt_cost: must be between 4 and 31, got {section.bcrypt_cost}")
    if prefix == "database." and section.pool_min_size > section.pool_max_size:
        raise ConfigError("database.pool_min_size: must not exceed database.pool_max_size")
    if prefix == "imap.":
        _check_imap(section)
    if prefix in ("intake.", "submission."):
        _check_budget(section, prefix, "max_data_bytes_in_flight", "max_message_size")


def _check_budget(section: Any, prefix: str, budget: str, largest: str) -> None:
    """A process's budget of bytes in flight (encimap.service.bytebudget) holds the largest
    command's bytes."""
    value, size = getattr(section, budget), getattr(section, largest)
    if value != 0 and value < size:
        raise ConfigError(
            f"{prefix}{budget}: must be 0 (no limit) or at least {prefix}{largest} ({size}), "
            f"got {value}"
        )


# The largest limit encimap.service.slots counts across processes (slots per key).
SHARED_LIMIT = 1 << 16


def _check_imap(section: IMAPConfig) -> None:
    for name in ("idle_timeout", "login_timeout", "command_timeout"):
        if getattr(section, name) <= 0:
            raise ConfigError(f"imap.{name}: must be positive, got {getattr(section, name)!r}")
    for name in (
        "max_mailbox_name_length",
        "max_mailbox_depth",
        "max_mailboxes",
        "max_catenate_parts",
        "max_append_messages",
        "workers",
    ):
        if getattr(section, name) < 1:
            raise ConfigError(f"imap.{name}: must be at least 1, got {getattr(section, name)}")
    for name in ("max_connections_per_user", "max_connections_per_ip"):
        if getattr(section, name) > SHARED_LIMIT:  # counted in encimap.service.slots
            raise ConfigError(f"imap.{name}: at most {SHARED_LIMIT}, got {getattr(section, name)}")
    if not 1 <= section.max_search_keys <= 10_000:
        raise ConfigError(
            f"imap.max_search_keys: must be between 1 and 10000, got {section.max_search_keys}"
        )
    if not 1 <= section.max_literal_before_login <= section.max_literal_size:
        raise ConfigError(
            "imap.max_literal_before_login: must be between 1 and imap.max_literal_size, "
            f"got {section.max_literal_before_login}"
        )
    _check_budget(section, "imap.", "max_literal_bytes_in_flight", "max_literal_size")


def listeners(value: str | list[str]) -> list[str]:
    """A listener key's value as a list (a key that takes several accepts one or a list)."""
    if isinstance(value, str):
        return [value] if value else []
    return list(value)


def parse_listener(spec: str) -> tuple[str, str | int]:
    """Split `"host:port"` or `"unix:/path"` into ("unix", path) or (host, port)."""
    if spec.startswith("unix:"):
        return "unix", spec[len("unix:") :]
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{spec!r}: a listener is 'host:port' or 'unix:/path'")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - operator's choice


def to_mapping(config: Config) -> dict[str, Any]:
    """The configuration as plain TOML-like data (what `from_mapping` reads back)."""
    raw = dataclasses.asdict(config)
    raw.pop("source")
    return raw


def from_mapping(raw: dict[str, Any], source: str = "") -> Config:
    """A Config from plain data, validated like a file (worker processes receive it so)."""
    return dataclasses.replace(_build(Config, raw, prefix=""), source=source)
