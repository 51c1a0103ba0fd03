"""The `encimap` command. Every command exits non-zero with one clear line on failure."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from encimap import config as config_module
from encimap import logs
from encimap.auth.passwords import PasswordError
from encimap.cli import admin, certs, dev, keys
from encimap.cli.common import CommandError
from encimap.db import DatabaseUnavailable
from encimap.migrations import MigrationError
from encimap.service import eventloop
from encimap.store import StoreError
from encimap.tls import TLSError

Handler = Callable[[config_module.Config, argparse.Namespace], Coroutine[Any, Any, int]]
SERVICES = ("intake", "submission", "authsocket", "imap", "wkd", "all")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encimap", description=__doc__)
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run services in the foreground")
    serve.add_argument("service", nargs="?", default="all", choices=SERVICES)
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser("dev", help="demo: private PostgreSQL, demo data, all services")
    demo.add_argument("--dir", default=str(dev.DEV_DIR), help="demo state (default: .dev/)")
    demo.add_argument("--pg-port", type=int, default=dev.DEMO_PORT, metavar="PORT")
    demo.set_defaults(handler=dev.run)

    database = commands.add_parser("db", help="database migrations").add_subparsers(
        dest="action", required=True
    )
    migrate = database.add_parser("migrate", help="apply pending migrations and data moves")
    migrate.add_argument(
        "--plan", action="store_true", help="say what would change, change nothing"
    )
    migrate.set_defaults(handler=admin.db_migrate)
    database.add_parser("status", help="applied and pending migrations").set_defaults(
        handler=admin.db_status
    )
    database.add_parser(
        "recount", help="rebuild the mailbox and quota counters from the stored messages"
    ).set_defaults(handler=admin.db_recount)

    user = commands.add_parser("user", help="platform users").add_subparsers(
        dest="action", required=True
    )
    create_user = user.add_parser("create", help="create a user")
    create_user.add_argument("email")
    create_user.set_defaults(handler=admin.user_create)

    motorblock = commands.add_parser("motorblock", help="SMTP sending accounts").add_subparsers(
        dest="action", required=True
    )
    create_mb = motorblock.add_parser("create", help="create a MotorBlock")
    create_mb.add_argument("--user", required=True, metavar="EMAIL")
    create_mb.add_argument("--username", required=True, metavar="NAME")
    create_mb.add_argument("--domain", required=True)
    create_mb.add_argument("--rate-limit", type=int, default=100, metavar="N")
    create_mb.set_defaults(handler=admin.motorblock_create)

    vaultbox = commands.add_parser("vaultbox", help="encrypted mailboxes").add_subparsers(
        dest="action", required=True
    )
    create_vb = vaultbox.add_parser("create", help="create a vaultbox")
    create_vb.add_argument("--user", required=True, metavar="EMAIL")
    create_vb.add_argument("--domain", required=True)
    create_vb.add_argument("--alias", required=True)
    create_vb.add_argument("--name")
    create_vb.set_defaults(handler=admin.vaultbox_create)
    vaultbox.add_parser("list", help="list vaultboxes").set_defaults(handler=admin.vaultbox_list)

    credential = commands.add_parser("credential", help="vaultbox logins").add_subparsers(
        dest="action", required=True
    )
    create_cred = credential.add_parser("create", help="create an SMTP or IMAP credential")
    create_cred.add_argument("kind", choices=("smtp", "imap"))
    create_cred.add_argument("address")
    create_cred.add_argument("--username", help="default: the vaultbox's username, or a new one")
    create_cred.set_defaults(handler=admin.credential_create)
    revoke = credential.add_parser("revoke", help="revoke a username's credentials")
    revoke.add_argument("username")
    revoke.set_defaults(handler=admin.credential_revoke)

    certs.add_parser(commands)
    keys.add_parser(commands)

    commands.add_parser("check", help="check databases, TLS files and listeners").set_defaults(
        handler=admin.check
    )
    return parser


async def _serve(cfg: config_module.Config, args: argparse.Namespace) -> int:
    from encimap import service

    return await service.run(cfg, args.service)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_module.load(args.config)
    except config_module.ConfigError as exc:
        print(f"encimap: configuration: {exc}", file=sys.stderr)
        return 2
    if args.command not in ("serve", "dev"):
        logs.configure(cfg.log.level if cfg.log.level != "info" else "warning", "console")
    handler: Handler = args.handler
    try:
        # Services run on the configured loop; one-shot admin commands gain nothing from it.
        event_loop = cfg.service.event_loop if args.command in ("serve", "dev") else "asyncio"
        return eventloop.run(handler(cfg, args), event_loop)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a listener that cannot bind, a file that cannot be read
        print(f"encimap: {exc}", file=sys.stderr)
        return 1
    except (
        TLSError,
        CommandError,
        StoreError,
        PasswordError,
        DatabaseUnavailable,
        MigrationError,
        config_module.ConfigError,
    ) as exc:
        print(f"encimap: {exc}", file=sys.stderr)
        return 1
