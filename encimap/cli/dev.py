"""`encimap dev`: the demo. A private PostgreSQL cluster under `.dev/` in the repository, both
databases migrated, a demo user, MotorBlock and vaultbox with fresh credentials, and every
service on loopback ports; Ctrl-C stops the services and the cluster."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import asyncpg

from encimap import config as config_module
from encimap import db, logs, openpgp, smime
from encimap.auth.passwords import generate_password, hash_password
from encimap.openpgp.generate import generate_key
from encimap.pgcluster import LocalCluster, prepare_databases
from encimap.service.listeners import bind
from encimap.store import certificates, credentials, openpgp_keys, platform, vaultboxes
from encimap.tls import write_self_signed

DEV_DIR = Path(__file__).resolve().parents[2] / ".dev"
DEMO_USER = "demo@example.test"
DEMO_DOMAIN = "example.test"
DEMO_MOTORBLOCK = "demo-motorblock"
DEMO_ADDRESS = f"demo@{DEMO_DOMAIN}"
DEMO_PORT = 55432
DEMO_P12_NAME = "demo-smime.p12"
DEMO_OPENPGP_NAME = "demo-openpgp-secret.asc"
DEMO_WKD = "127.0.0.1:9592"


class DevSink:
    """The demo's upstream MTA for submission: logs what it receives and keeps nothing."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or b""
        headers = BytesHeaderParser().parsebytes(content)
        logs.get_logger("dev.sink").info(
            "sink.received",
            mail_from=envelope.mail_from,
            rcpt_tos=envelope.rcpt_tos,
            size=len(content),
            subject=headers.get("Subject"),
            auth=" ".join(str(headers.get("X-Encimap-Auth", "")).split()),
        )
        return "250 2.0.0 Ok: accepted by the encimap dev sink"


async def start_sink(spec: str) -> asyncio.Server:
    from aiosmtpd.smtp import SMTP

    handler = DevSink()
    return await bind(spec, lambda: SMTP(handler, hostname="dev-sink"))


@dataclass
class DemoLogin:
    kind: str
    username: str
    password: str
    note: bool = False  # `kind` is a line to print, not a login


def dev_config(
    base: config_module.Config, cluster: LocalCluster, tls: tuple[Path, Path]
) -> config_module.Config:
    """The demo's configuration: the private cluster, the demo TLS files, and the configured
    listeners moved to loopback (the default auth socket moves into the demo directory)."""
    dev_dir = cluster.datadir.parent
    authsocket = base.authsocket.listen
    if authsocket == config_module.AuthSocketConfig().listen:
        authsocket = [f"unix:{dev_dir}/auth"]
    return dataclasses.replace(
        base,
        database=dataclasses.replace(
            base.database,
            motorical_url=cluster.url("motorical_db"),
            encimap_url=cluster.url("motorical_encrypted_imap"),
        ),
        tls=dataclasses.replace(base.tls, cert=str(tls[0]), key=str(tls[1])),
        submission=dataclasses.replace(
            base.submission,
            listen=_loopback(base.submission.listen),
            tls_listen=_loopback(base.submission.tls_listen),
        ),
        authsocket=dataclasses.replace(base.authsocket, listen=authsocket),
        imap=dataclasses.replace(
            base.imap,
            listen=_loopback(base.imap.listen),
            tls_listen=_loopback(base.imap.tls_listen),
        ),
        wkd=dataclasses.replace(base.wkd, listen=_loopback(base.wkd.listen or DEMO_WKD)),
        log=dataclasses.replace(base.log, format="console"),
    )


def _loopback(value: str | list[str]) -> list[str]:
    return [spec.replace("0.0.0.0:", "127.0.0.1:") for spec in config_module.listeners(value)]


async def seed(cfg: config_module.Config, directory: Path = DEV_DIR) -> list[DemoLogin]:
    """Create the demo data once; give its logins new passwords on every start."""
    cost = cfg.auth.bcrypt_cost
    logins = []
    async with db.connect(cfg.database, "motorical") as conn:
        try:
            user = await platform.find_user(conn, DEMO_USER)
        except platform.NotFound:
            user = await platform.create_user(conn, DEMO_USER)
        password = generate_password()
        password_hash = hash_password(password, cost)
        try:
            await platform.set_motorblock_password(conn, DEMO_MOTORBLOCK, password_hash)
        except platform.NotFound:
            await platform.create_motorblock(
                conn,
                user_id=user.id,
                username=DEMO_MOTORBLOCK,
                password_hash=password_hash,
                domain=DEMO_DOMAIN,
                rate_limit_per_hour=100,
            )
        logins.append(DemoLogin("motorblock (SMTP)", DEMO_MOTORBLOCK, password))
    async with db.connect(cfg.database, "encimap") as conn:
        box, login = await _demo_vaultbox(conn, user.id, "demo", "Demo vaultbox", cost)
        logins.append(login)
        if not await certificates.public_certificates(conn, box.id):
            logins.append(await _demo_certificate(conn, box.id, directory / DEMO_P12_NAME))
        box, login = await _demo_vaultbox(conn, user.id, "pgp", "Demo OpenPGP vaultbox", cost)
        logins.append(login)
        if not await openpgp_keys.keys_of(conn, box.id):
            try:
                logins.append(await _demo_openpgp_key(conn, box, directory / DEMO_OPENPGP_NAME))
            except openpgp.OpenPGPError as exc:  # no gpg: the demo runs without that key
                note = f"no OpenPGP key for {box.address}: {exc}"
                logins.append(DemoLogin(note, "-", "", note=True))
    return logins


async def _demo_vaultbox(
    conn: asyncpg.Connection, user_id: Any, alias: str, name: str, cost: int
) -> tuple[vaultboxes.Vaultbox, DemoLogin]:
    """The demo vaultbox `alias@example.test`, with new SMTP + IMAP passwords."""
    box = await vaultboxes.find_vaultbox(
        conn, f"{alias}@{DEMO_DOMAIN}"
    ) or await vaultboxes.create_vaultbox(
        conn, user_id=user_id, alias=alias, domain=DEMO_DOMAIN, name=name
    )
    username = await credentials.vaultbox_username(conn, box.id) or credentials.new_username(
        DEMO_DOMAIN
    )
    password = generate_password()
    password_hash = hash_password(password, cost)
    for kind in ("smtp", "imap"):
        try:
            await credentials.set_password(conn, kind, username, password_hash)
        except credentials.NotFound:
            await credentials.create_credential(
                conn, kind=kind, vaultbox_id=box.id, username=username, password_hash=password_hash
            )
    return box, DemoLogin(f"vaultbox {box.address} (SMTP + IMAP)", username, password)


async def _demo_openpgp_key(
    conn: asyncpg.Connection, box: vaultboxes.Vaultbox, secret: Path
) -> DemoLogin:
    """An OpenPGP key for the OpenPGP demo vaultbox: the server stores the public key, the
    passphrase-protected secret key goes to a file for the mail client."""
    passphrase = generate_password()
    key = generate_key(box.address, passphrase)
    cert, info = openpgp.check_key(key.public_armored, box.address)
    await openpgp_keys.put_key(conn, vaultbox_id=box.id, armored_key=str(cert), info=info)
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.touch(mode=0o600)
    secret.write_bytes(key.secret_armored)
    return DemoLogin(
        f"OpenPGP key for {box.address} (secret key {secret}; gpg --import {secret}, or "
        "Thunderbird: Account Settings > End-To-End Encryption > Add Key > Import)",
        "-",
        passphrase,
    )


async def _demo_certificate(conn: asyncpg.Connection, vaultbox_id: Any, p12: Path) -> DemoLogin:
    """A certificate so the intake can deliver to the demo vaultbox; the server stores only
    the public part, the key goes to a PKCS#12 file for the mail client."""
    cert_pem, key, _info = await certificates.add_generated_certificate(
        conn, vaultbox_id=vaultbox_id, address=DEMO_ADDRESS
    )
    password = generate_password()
    p12.parent.mkdir(parents=True, exist_ok=True)
    p12.touch(mode=0o600)
    p12.write_bytes(smime.export_pkcs12(cert_pem, key, password.encode(), DEMO_ADDRESS))
    return DemoLogin(f"S/MIME key for {DEMO_ADDRESS} (PKCS#12 {p12})", "-", password)


def print_summary(
    cfg: config_module.Config, cluster: LocalCluster, logins: list[DemoLogin]
) -> None:
    print("encimap demo")
    print(f"  PostgreSQL     {cluster.url('motorical_db')}")
    print(f"                 {cluster.url('motorical_encrypted_imap')}")
    print(f"  data directory {cluster.datadir}")
    for login in logins:
        if login.note:
            print(f"  {login.kind}")
            continue
        who = f"username {login.username}  " if login.username != "-" else ""
        print(f"  {login.kind}: {who}password {login.password}")
    print(f"  intake (LMTP)  {', '.join(config_module.listeners(cfg.intake.listen))}")
    submission = ", ".join(config_module.listeners(cfg.submission.listen))
    print(f"  submission     {submission} (STARTTLS, then AUTH PLAIN/LOGIN)")
    print(
        f"                 relays to the dev sink {cfg.submission.relay}, which logs each message"
    )
    starttls = ", ".join(config_module.listeners(cfg.imap.listen))
    implicit = ", ".join(config_module.listeners(cfg.imap.tls_listen))
    print(f"  IMAP           {starttls} (STARTTLS), {implicit} (TLS)")
    print("                 log in with a vaultbox username above; import its PKCS#12 or")
    print("                 OpenPGP key into the client to read the encrypted mail")
    print("                 (docs/imap.md, docs/openpgp.md)")
    print(
        f"  auth socket    {', '.join(config_module.listeners(cfg.authsocket.listen))}"
        " (Dovecot protocol: Postfix smtpd_sasl_type = dovecot, smtpd_sasl_path = that path)"
    )
    if cfg.authsocket.http_listen:
        print(f"  nginx auth_http http://{cfg.authsocket.http_listen}/auth")
    for spec in config_module.listeners(cfg.wkd.listen):
        print(f"  WKD            http://{spec}/.well-known/openpgpkey/hu/... (Host: {DEMO_DOMAIN})")
    if cfg.metrics.listen:
        print(f"  metrics        http://{cfg.metrics.listen}/metrics  /healthz  /readyz")
    print(f"  TLS (self-signed demo certificate) {cfg.tls.cert}")
    print("Ctrl-C stops the services and the database.", flush=True)


async def run(base: config_module.Config, args: argparse.Namespace) -> int:
    from encimap import service

    directory = Path(args.dir).resolve()
    cluster = LocalCluster(directory / "pg", port=args.pg_port)
    tls = write_self_signed(directory / "tls")
    cluster.start()
    try:
        await prepare_databases(cluster, "motorical_db", "motorical_encrypted_imap")
        cfg = dev_config(base, cluster, tls)
        logins = await seed(cfg, directory)
        sink = await start_sink(cfg.submission.relay)
        # The summary ends with "Ctrl-C stops...": print it once Ctrl-C is handled.
        ready = asyncio.Event()

        async def announce() -> None:
            await ready.wait()
            print_summary(cfg, cluster, logins)

        announcer = asyncio.create_task(announce())
        try:
            return await service.run(cfg, "all", ready=ready)
        finally:
            announcer.cancel()
            sink.close()
    finally:
        cluster.stop()
