"""Administrative commands: migrations, users, MotorBlocks, vaultboxes, credentials, check."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl

import asyncpg

from encimap import db, migrations
from encimap.auth.passwords import hash_password
from encimap.cli.common import CommandError, read_or_generate_password
from encimap.config import Config, listeners, parse_listener
from encimap.store import (
    adoption,
    certificates,
    counters,
    credentials,
    logins,
    platform,
    vaultboxes,
)


async def db_migrate(cfg: Config, args: argparse.Namespace) -> int:
    """Apply what is pending (or, with --plan, say what would be applied and change nothing)."""
    for database in db.DATABASES:
        async with db.connect(cfg.database, database) as conn:
            try:
                if args.plan:
                    _print_plan(database, await migrations.plan(conn, database))
                    continue
                outcome = await migrations.upgrade(conn, database, _progress_printer(database))
            except migrations.MigrationError as exc:
                raise CommandError(str(exc)) from None
        names = ", ".join(m.label for m in outcome.versioned) or "nothing to apply"
        repeated = f" (repeatable: {len(outcome.repeatables)} re-applied)" * bool(
            outcome.repeatables
        )
        print(f"{database}: {names}{repeated}")
    return 0


def _progress_printer(database: str) -> adoption.Progress:
    return lambda line: print(f"{database}: {line}", flush=True)


def _print_plan(database: str, outcome: migrations.Outcome) -> None:
    if not outcome.versioned and not outcome.repeatables:
        print(f"{database}: nothing to apply")
    for migration in outcome.versioned:
        print(f"{database}: {migration.label} would run:")
        for statement in outcome.statements[migration.path.name]:
            print(f"    {statement}")
    if outcome.repeatables:
        names = ", ".join(r.name for r in outcome.repeatables)
        print(f"{database}: repeatable migrations would be re-applied: {names}")
    if outcome.data_moves is not None:
        print(f"{database}: then, in batches while the services run:")
        for line in outcome.data_moves.lines():
            print(f"    {line}")


async def db_status(cfg: Config, _args: argparse.Namespace) -> int:
    pending_total = 0
    for database in db.DATABASES:
        async with db.connect(cfg.database, database) as conn:
            done = await migrations.applied_versions(conn, database)
            todo = await adoption.pending(conn) if database == "encimap" and done else None
        for migration in migrations.available_migrations(database):
            state = "applied" if migration.version in done else "pending"
            pending_total += state == "pending"
            print(f"{database} {migration.label} {state}")
        if todo is not None:
            moves = todo.unplaced_messages + todo.undescribed_messages
            pending_total += moves > 0
            print(f"{database} data moves: {moves} messages to place or describe")
    return 1 if pending_total else 0


async def db_recount(cfg: Config, _args: argparse.Namespace) -> int:
    """Recount every vaultbox's counters from its messages; say how many were off."""
    async with db.connect(cfg.database, "encimap") as conn:
        done = await counters.recount(
            conn, progress=lambda n: print(f"encimap: {n} vaultboxes recounted", flush=True)
        )
    print(f"encimap: {done.vaultboxes} vaultboxes recounted, {done.corrected} corrected")
    return 0


async def user_create(cfg: Config, args: argparse.Namespace) -> int:
    async with db.connect(cfg.database, "motorical") as conn:
        user = await platform.create_user(conn, args.email)
    print(f"user {user.email} id={user.id} (no platform password: the platform sets one)")
    return 0


async def motorblock_create(cfg: Config, args: argparse.Namespace) -> int:
    if args.rate_limit < 0:
        raise CommandError("--rate-limit must not be negative")
    password, generated = read_or_generate_password("password")
    password_hash = hash_password(password, cfg.auth.bcrypt_cost)
    async with db.connect(cfg.database, "motorical") as conn:
        user = await platform.find_user(conn, args.user)
        block = await platform.create_motorblock(
            conn,
            user_id=user.id,
            username=args.username,
            password_hash=password_hash,
            domain=args.domain,
            rate_limit_per_hour=args.rate_limit,
        )
    print(
        f"motorblock {block.username} domain={block.domain} "
        f"rate_limit_per_hour={block.rate_limit_per_hour} id={block.id}"
    )
    if generated:
        print(f"password: {password}")
    return 0


async def vaultbox_create(cfg: Config, args: argparse.Namespace) -> int:
    async with db.connect(cfg.database, "motorical") as conn:
        user = await platform.find_user(conn, args.user)
    async with db.connect(cfg.database, "encimap") as conn:
        box = await vaultboxes.create_vaultbox(
            conn, user_id=user.id, alias=args.alias, domain=args.domain, name=args.name
        )
    print(f"vaultbox {box.address} id={box.id} status={box.status}")
    return 0


async def vaultbox_list(cfg: Config, _args: argparse.Namespace) -> int:
    async with db.connect(cfg.database, "encimap") as conn:
        boxes = await vaultboxes.list_vaultboxes(conn)
    for box in boxes:
        print(f"{box.address}\t{box.status}\tsmtp={'on' if box.smtp_enabled else 'off'}\t{box.id}")
    return 0


async def credential_create(cfg: Config, args: argparse.Namespace) -> int:
    password, generated = read_or_generate_password("password")
    password_hash = hash_password(password, cfg.auth.bcrypt_cost)
    async with db.connect(cfg.database, "encimap") as conn, conn.transaction():
        box = await vaultboxes.get_vaultbox(conn, args.address)
        username = args.username or await credentials.vaultbox_username(conn, box.id)
        if username is None:
            username = credentials.new_username(box.domain)
            while await credentials.username_owner(conn, username) is not None:
                username = credentials.new_username(box.domain)
        owner = await credentials.username_owner(conn, username)
        if owner not in (None, box.id):
            raise CommandError(f"username {username} belongs to another vaultbox")
        await credentials.create_credential(
            conn,
            kind=args.kind,
            vaultbox_id=box.id,
            username=username,
            password_hash=password_hash,
        )
    print(f"{args.kind} credential for {box.address}")
    print(f"username: {username}")
    if generated:
        print(f"password: {password}")
    return 0


async def credential_revoke(cfg: Config, args: argparse.Namespace) -> int:
    async with db.connect(cfg.database, "encimap") as conn, conn.transaction():
        revoked = await credentials.revoke_credentials(conn, args.username)
    print(f"revoked {args.username}: {', '.join(revoked)}")
    return 0


async def check(cfg: Config, _args: argparse.Namespace) -> int:
    """Report every dependency a service needs, one line each; non-zero if any fails."""
    results: list[tuple[str, bool | None, str]] = []
    for database in db.DATABASES:
        try:
            async with db.connect(cfg.database, database) as conn:
                done = await migrations.applied_versions(conn, database)
                pending = len(migrations.pending_migrations(database, done))
                server = _server(await db.check_health(conn, database))
                results.append(
                    (
                        f"database {database}",
                        pending == 0,
                        f"reachable at {server}, migrations current"
                        if pending == 0
                        else f"reachable at {server}, {pending} migration(s) pending",
                    )
                )
                if database == "encimap" and not pending:
                    results.extend(await _adoption_checks(conn))
        except (db.DatabaseUnavailable, migrations.MigrationError) as exc:
            results.append((f"database {database}", False, str(exc)))
    for database in db.DATABASES:
        results.append((f"auth pool {database}", *await _check_auth_pool(cfg, database)))
    results.append(("tls", *_check_tls(cfg)))
    for name, spec in _configured_listeners(cfg):
        results.append((f"listener {name} {spec}", *_check_listener(spec)))
    for spec in listeners(cfg.authsocket.listen):
        answer = await _check_auth_socket(spec)
        if answer is not None:
            results.append((f"auth socket {spec}", *answer))
    for label, ok, detail in results:
        print(f"{_VERDICT[ok]} {label}: {detail}")
    return 0 if all(ok is not False for _, ok, _ in results) else 1


# A check is ok (True), failed (False) or a warning (None: reported, not a failure).
_VERDICT: dict[bool | None, str] = {True: "ok  ", False: "FAIL", None: "WARN"}


async def _adoption_checks(conn: asyncpg.Connection) -> list[tuple[str, bool | None, str]]:
    checks: list[tuple[str, bool | None, str]] = []
    try:
        private = await certificates.count_private(conn)
    except asyncpg.InsufficientPrivilegeError:
        checks.append(("private keys", None, "this login may not read certificates to count them"))
    else:
        if private:
            checks.append(
                (
                    "private keys",
                    None,
                    f"{private} server-held private key row(s) in certificates: "
                    "remove them with `encimap cert purge-private`",
                )
            )
    todo = await adoption.pending(conn)
    if todo.unplaced_messages or todo.vaultboxes_without_mailboxes:
        checks.append(
            (
                "data moves",
                None,
                f"{todo.unplaced_messages} stored messages not yet in a mailbox: "
                "run `encimap db migrate`",
            )
        )
    return checks


async def _check_auth_pool(cfg: Config, database: db.Database) -> tuple[bool, str]:
    """The auth engine's pool: connects as its role and may read its login tables."""
    try:
        pool = await db.create_pool(
            cfg.database, database, role=db.ROLE_AUTH, purpose="check", min_size=1, max_size=1
        )
    except db.DatabaseUnavailable as exc:
        return False, str(exc)
    try:
        lookup = logins.motorblock_login if database == "motorical" else logins.vaultbox_imap_login
        await lookup(pool, "encimap-check-no-such-user")
        health = await db.check_health(pool, database)
    except (asyncpg.PostgresError, OSError) as exc:
        return False, f"role {db.ROLE_AUTH}: {exc}"
    finally:
        await pool.close()
    return True, f"role {db.ROLE_AUTH} reads its login tables, connected to {_server(health)}"


def _server(health: db.Health) -> str:
    """`host:port (primary)` or `(standby)`: which server of a multi-host URL answered."""
    if not health.ok:
        return f"? ({health.error})"
    return f"{health.server} ({'primary' if health.primary else 'standby'})"


async def _check_auth_socket(spec: str) -> tuple[bool, str] | None:
    """A running auth socket answers the Dovecot handshake (None: nothing listening there)."""
    host, port = parse_listener(spec)
    try:
        if host == "unix":
            reader, writer = await asyncio.open_unix_connection(str(port))
        else:
            reader, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return None
    try:
        writer.write(b"VERSION\t1\t2\nCPID\t1\n")
        lines: list[bytes] = []
        async with asyncio.timeout(5):
            while not lines or lines[-1] != b"DONE":
                line = await reader.readline()
                if not line:
                    break
                lines.append(line.rstrip(b"\n"))
    except (OSError, TimeoutError) as exc:
        return False, f"no handshake: {exc or type(exc).__name__}"
    finally:
        writer.close()
    mechanisms = [line.split(b"\t")[1].decode() for line in lines if line.startswith(b"MECH\t")]
    if not lines or lines[-1] != b"DONE" or not mechanisms:
        return False, "answered, but not with a Dovecot auth handshake"
    return True, f"answers the handshake ({', '.join(mechanisms)})"


def _check_tls(cfg: Config) -> tuple[bool, str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cfg.tls.cert, cfg.tls.key)
    except (OSError, ssl.SSLError) as exc:
        return False, f"{cfg.tls.cert} / {cfg.tls.key}: {exc}"
    return True, f"{cfg.tls.cert} loads with its key"


def _configured_listeners(cfg: Config) -> list[tuple[str, str]]:
    pairs = [
        ("intake", cfg.intake.listen),
        ("submission", cfg.submission.listen),
        ("submission-tls", cfg.submission.tls_listen),
        ("authsocket", cfg.authsocket.listen),
        ("imap", cfg.imap.listen),
        ("imap-tls", cfg.imap.tls_listen),
        ("metrics", cfg.metrics.listen),
        ("wkd", cfg.wkd.listen),
    ]
    return [(name, spec) for name, value in pairs for spec in listeners(value)]


def _check_listener(spec: str) -> tuple[bool, str]:
    """Whether a service could bind here: answering already (running) or free to bind."""
    host, port = parse_listener(spec)
    if host == "unix":
        directory = os.path.dirname(str(port)) or "."
        if os.path.exists(str(port)):
            return True, "socket exists"
        ok = os.access(directory, os.W_OK)
        return ok, "directory writable" if ok else f"cannot create socket in {directory}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.settimeout(1)
        if probe.connect_ex((host, int(port))) == 0:
            return True, "accepting connections"
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError as exc:
            return False, f"cannot bind: {exc.strerror}"
    return True, "free to bind"
