"""The `encimap` command end to end: real subprocess, real PostgreSQL, exit codes, messages."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import bcrypt
import pytest

from tests.platform_support import seeded_databases
from tests.support import Databases, run_cli, write_config_file


@pytest.fixture(scope="module")
def cfg_file(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config_file(tmp_path_factory.mktemp("cli") / "encimap.toml", databases)


def ok(*args: str, cfg: Path, stdin: str | None = None, tty: bool = False) -> str:
    result = run_cli(*args, config_file=cfg, stdin=stdin, tty=tty)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fails(*args: str, cfg: Path, stdin: str | None = None, code: int = 1) -> str:
    result = run_cli(*args, config_file=cfg, stdin=stdin)
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_db_migrate_and_status(cfg_file: Path):
    assert ok("db", "migrate", cfg=cfg_file).splitlines() == [
        "motorical: nothing to apply",
        "encimap: nothing to apply",
    ]
    status = ok("db", "status", cfg=cfg_file)
    assert "pending" not in status and "encimap 002_encimap_tables applied" in status


async def test_a_failing_migration_says_one_line_and_applies_nothing(tmp_path: Path, pg_cluster):
    """A conflicting object (a `mailboxes` table of someone else's) stops the migration that
    meets it: one line naming the file, the statement and PostgreSQL's message; nothing of
    that migration stays."""
    tag = uuid.uuid4().hex[:8]
    dbs = await seeded_databases(pg_cluster, f"fail_mot_{tag}", f"fail_enc_{tag}")
    conn = await dbs.connect()
    try:
        await conn.execute("CREATE TABLE mailboxes (id integer)")
        cfg = write_config_file(tmp_path / "encimap.toml", dbs)
        error = fails("db", "migrate", cfg=cfg)
        assert error.count("\n") == 0
        assert error.startswith(
            "encimap: sql/encimap/002_encimap_tables.sql: "
            "CREATE UNIQUE INDEX IF NOT EXISTS mailboxes_name_key"
        )
        assert error.endswith('column "vaultbox_id" does not exist')
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'vaultbox_smtp_credentials' AND column_name = 'enabled'"
        )
        assert columns == []
        versions = await conn.fetch(
            "SELECT version FROM schema_migrations WHERE component = 'encimap'"
        )
        assert [row["version"] for row in versions] == [1]
    finally:
        await conn.close()


def test_db_migrate_against_unreachable_database_fails_clearly(tmp_path: Path, pg_cluster):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[database]\nmotorical_url = "postgresql://postgres@127.0.0.1:1/x"\n'
        'encimap_url = "postgresql://postgres@127.0.0.1:1/y"\nconnect_timeout = 2\n'
    )
    assert fails("db", "migrate", cfg=cfg).startswith("encimap: motorical database:")


def test_user_create_and_duplicate(cfg_file: Path):
    assert ok("user", "create", "alice@example.org", cfg=cfg_file).startswith(
        "user alice@example.org id="
    )
    assert fails("user", "create", "ALICE@example.org", cfg=cfg_file) == (
        "encimap: user ALICE@example.org already exists"
    )


async def test_motorblock_create_with_piped_password(cfg_file: Path, databases: Databases):
    ok("user", "create", "mb-owner@example.org", cfg=cfg_file)
    out = ok(
        "motorblock",
        "create",
        "--user",
        "mb-owner@example.org",
        "--username",
        "mb1",
        "--domain",
        "Example.ORG",
        "--rate-limit",
        "7",
        cfg=cfg_file,
        stdin="piped-secret-1\nignored\n",
    )
    assert "motorblock mb1 domain=example.org rate_limit_per_hour=7" in out
    assert "piped-secret-1" not in out and "password" not in out
    conn = await databases.connect("motorical")
    try:
        stored = await conn.fetchval("SELECT password_hash FROM motor_blocks WHERE username='mb1'")
    finally:
        await conn.close()
    assert bcrypt.checkpw(b"piped-secret-1", stored.encode())
    assert stored.startswith("$2b$04$")  # cost from configuration


def test_motorblock_failures(cfg_file: Path):
    assert fails(
        "motorblock",
        "create",
        "--user",
        "nobody@example.org",
        "--username",
        "x",
        "--domain",
        "example.org",
        cfg=cfg_file,
        stdin="pw\n",
    ) == ("encimap: no user nobody@example.org")
    ok("user", "create", "mb2@example.org", cfg=cfg_file)
    args = (
        "motorblock",
        "create",
        "--user",
        "mb2@example.org",
        "--username",
        "dup",
        "--domain",
        "example.org",
    )
    ok(*args, cfg=cfg_file, stdin="pw\n")
    assert fails(*args, cfg=cfg_file, stdin="pw\n") == (
        "encimap: MotorBlock username dup already exists"
    )
    assert fails(*args[:-2], "--domain", "x.org", cfg=cfg_file, stdin="\n") == (
        "encimap: no password on standard input (first line is empty)"
    )


def test_vaultbox_create_list_and_failures(cfg_file: Path):
    ok("user", "create", "vb-owner@example.org", cfg=cfg_file)
    out = ok(
        "vaultbox",
        "create",
        "--user",
        "vb-owner@example.org",
        "--domain",
        "Mail.Example",
        "--alias",
        "Inbox1",
        "--name",
        "First",
        cfg=cfg_file,
    )
    assert out.startswith("vaultbox inbox1@mail.example id=")
    assert "inbox1@mail.example\tactive" in ok("vaultbox", "list", cfg=cfg_file)
    assert fails(
        "vaultbox",
        "create",
        "--user",
        "vb-owner@example.org",
        "--domain",
        "MAIL.example",
        "--alias",
        "INBOX1",
        cfg=cfg_file,
    ) == ("encimap: vaultbox INBOX1@MAIL.example already exists")
    assert (
        fails(
            "vaultbox",
            "create",
            "--user",
            "ghost@example.org",
            "--domain",
            "x.example",
            "--alias",
            "a",
            cfg=cfg_file,
        )
        == "encimap: no user ghost@example.org"
    )
    assert "is not an address of the form alias@domain" in fails(
        "vaultbox",
        "create",
        "--user",
        "vb-owner@example.org",
        "--domain",
        "bad domain",
        "--alias",
        "a",
        cfg=cfg_file,
    )


async def test_credentials_share_username_and_verify(cfg_file: Path, databases: Databases):
    ok("user", "create", "cred-owner@example.org", cfg=cfg_file)
    ok(
        "vaultbox",
        "create",
        "--user",
        "cred-owner@example.org",
        "--domain",
        "cred.example",
        "--alias",
        "box",
        cfg=cfg_file,
    )
    smtp = ok("credential", "create", "smtp", "BOX@cred.example", cfg=cfg_file, tty=True)
    username = re.search(r"username: (\S+)", smtp)[1]
    password = re.search(r"password: (\S+)", smtp)[1]
    assert re.fullmatch(r"encimap-cred-example-[a-z0-9]{6}", username)
    imap = ok(
        "credential", "create", "imap", "box@cred.example", cfg=cfg_file, stdin="imap-pass-22\n"
    )
    assert f"username: {username}" in imap and "password:" not in imap
    conn = await databases.connect()
    try:
        smtp_hash = await conn.fetchval(
            "SELECT password_hash FROM vaultbox_smtp_credentials WHERE username = $1", username
        )
        imap_hash = await conn.fetchval(
            "SELECT password_hash FROM imap_app_credentials WHERE username = $1", username
        )
    finally:
        await conn.close()
    assert bcrypt.checkpw(password.encode(), smtp_hash.encode())
    assert bcrypt.checkpw(b"imap-pass-22", imap_hash.encode())

    assert ok("credential", "revoke", username, cfg=cfg_file).strip() == (
        f"revoked {username}: imap, smtp"
    )
    conn = await databases.connect()
    try:
        assert await conn.fetchval(
            "SELECT revoked_at IS NOT NULL FROM imap_app_credentials WHERE username = $1", username
        )
        assert not await conn.fetchval(
            "SELECT enabled FROM vaultbox_smtp_credentials WHERE username = $1", username
        )
    finally:
        await conn.close()
    assert fails("credential", "revoke", username, cfg=cfg_file) == (
        f"encimap: no live credential {username}"
    )


def test_credential_for_unknown_address(cfg_file: Path):
    assert (
        fails("credential", "create", "imap", "nobody@nowhere.example", cfg=cfg_file, stdin="x\n")
        == "encimap: no vaultbox nobody@nowhere.example"
    )
    assert "not an address" in fails(
        "credential", "create", "imap", "no-at-sign", cfg=cfg_file, stdin="x\n"
    )


def test_passwords_never_reach_the_logs(cfg_file: Path, tmp_path: Path, databases: Databases):
    debug_cfg = write_config_file(tmp_path / "debug.toml", databases, '[log]\nlevel = "debug"\n')
    ok("user", "create", "log-owner@example.org", cfg=debug_cfg)
    result = run_cli(
        "motorblock",
        "create",
        "--user",
        "log-owner@example.org",
        "--username",
        "logmb",
        "--domain",
        "example.org",
        config_file=debug_cfg,
        stdin="very-secret-value-9\n",
    )
    assert result.returncode == 0
    assert "very-secret-value-9" not in result.stdout + result.stderr


def test_check_reports_each_dependency(
    cfg_file: Path, tmp_path: Path, databases: Databases, tls_files
):
    cfg = write_config_file(
        tmp_path / "check.toml",
        databases,
        f'[tls]\ncert = "{tls_files[0]}"\nkey = "{tls_files[1]}"\n'
        f'[intake]\nlisten = "127.0.0.1:0"\n[submission]\nlisten = "127.0.0.1:0"\n'
        f'[imap]\nlisten = "127.0.0.1:0"\ntls_listen = "127.0.0.1:0"\n'
        f'[authsocket]\nlisten = "unix:{tmp_path}/auth"\n[metrics]\nlisten = "127.0.0.1:0"\n',
    )
    out = ok("check", cfg=cfg)
    port = databases.cluster.port
    for database in ("motorical", "encimap"):
        assert (
            f"ok   database {database}: reachable at 127.0.0.1:{port} (primary), "
            "migrations current" in out
        )
    assert "ok   tls:" in out
    bad = write_config_file(
        tmp_path / "bad.toml",
        databases,
        '[tls]\ncert = "/nonexistent.pem"\nkey = "/nonexistent.key"\n',
    )
    result = run_cli("check", config_file=bad)
    assert result.returncode == 1
    assert "FAIL tls: /nonexistent.pem" in result.stdout


async def test_the_services_login_runs_migrate_when_nothing_is_pending(
    databases: Databases, tmp_path: Path
):
    """encimap-migrate.service runs as the services' login, which holds only the three roles:
    on a current schema `db migrate` only reads, and succeeds."""
    login = f"svc_{uuid.uuid4().hex[:8]}"
    conn = await databases.connect()
    try:
        await conn.execute(f"CREATE ROLE {login} LOGIN")
        await conn.execute(f"GRANT encimap_auth, encimap_intake, encimap_imap TO {login}")
    finally:
        await conn.close()
    as_login = Databases(
        databases.cluster,
        databases.motorical_url.replace("postgres@", f"{login}@"),
        databases.encimap_url.replace("postgres@", f"{login}@"),
    )
    cfg = write_config_file(tmp_path / "svc.toml", as_login)
    assert ok("db", "migrate", cfg=cfg).splitlines() == [
        "motorical: nothing to apply",
        "encimap: nothing to apply",
    ]


async def test_a_database_of_a_pre_release_schema_is_refused_in_one_line(
    tmp_path: Path, pg_cluster
):
    tag = uuid.uuid4().hex[:8]
    dbs = await seeded_databases(pg_cluster, f"old_mot_{tag}", f"old_enc_{tag}")
    conn = await dbs.connect()
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (component text, version integer, name text, "
            "applied_at timestamptz DEFAULT now(), PRIMARY KEY (component, version))"
        )
        await conn.execute("INSERT INTO schema_migrations VALUES ('encimap', 1, 'schema')")
    finally:
        await conn.close()
    cfg = write_config_file(tmp_path / "encimap.toml", dbs)
    assert fails("db", "migrate", cfg=cfg) == (
        "encimap: encimap: schema_migrations records 001_schema, which this encimap does not "
        "have (a database made by a pre-release encimap: recreate it; for the demo, `make clean`)"
    )
