"""Helpers shared by the tests: configuration for the test databases, data factories, CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pty
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from encimap import config as config_module
from encimap.auth.passwords import hash_password
from encimap.metrics import REGISTRY
from encimap.pgcluster import LocalCluster, prepare_databases
from encimap.store import credentials, platform, vaultboxes

TEST_BCRYPT_COST = 4  # fast hashes for data the tests create; cost is not under test here
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Databases:
    cluster: LocalCluster
    motorical_url: str
    encimap_url: str

    async def connect(self, which: str = "encimap") -> asyncpg.Connection:
        return await asyncpg.connect(
            self.motorical_url if which == "motorical" else self.encimap_url
        )


def migrated_databases(cluster: LocalCluster, motorical_name: str, encimap_name: str) -> Databases:
    """Create both databases in `cluster` and apply every migration."""
    urls = asyncio.run(prepare_databases(cluster, motorical_name, encimap_name))
    return Databases(cluster, *urls)


def make_config(
    databases: Databases, tls_files: tuple[Path, Path] | None = None, **sections: dict[str, Any]
) -> config_module.Config:
    """A Config for the test databases, with `sections` overriding keys per section."""
    cfg = config_module.Config(
        database=config_module.DatabaseConfig(
            motorical_url=databases.motorical_url, encimap_url=databases.encimap_url
        ),
        auth=config_module.AuthConfig(bcrypt_cost=TEST_BCRYPT_COST),
        # No fixed ports in tests: metrics endpoints only where a test asks for one.
        metrics=config_module.MetricsConfig(
            listen="", intake="", submission="", authsocket="", imap=""
        ),
    )
    if tls_files:
        cfg = dataclasses.replace(
            cfg, tls=config_module.TLSConfig(cert=str(tls_files[0]), key=str(tls_files[1]))
        )
    for section, values in sections.items():
        cfg = dataclasses.replace(
            cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)}
        )
    return cfg


_NO_METRICS = '[metrics]\nlisten = ""\nintake = ""\nsubmission = ""\nauthsocket = ""\nimap = ""\n'


def write_config_file(path: Path, databases: Databases, extra: str = "") -> Path:
    """A config file for the test databases; no metrics endpoint unless `extra` has one."""
    if "[metrics]" not in extra:
        extra += "\n" + _NO_METRICS
    path.write_text(
        f'[database]\nmotorical_url = "{databases.motorical_url}"\n'
        f'encimap_url = "{databases.encimap_url}"\n'
        f"[auth]\nbcrypt_cost = {TEST_BCRYPT_COST}\n{extra}"
    )
    return path


def run_cli(
    *args: str,
    config_file: Path | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    tty: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m encimap ARGS` as a user would: stdin is a pipe, or a terminal (`tty`)."""
    command = [sys.executable, "-m", "encimap"]
    if config_file:
        command += ["--config", str(config_file)]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("ENCIMAP_CONFIG", None)
    if tty:
        controller, terminal = pty.openpty()
        try:
            return subprocess.run(
                [*command, *args],
                stdin=terminal,
                capture_output=True,
                text=True,
                env=full_env,
                timeout=60,
                check=False,
            )
        finally:
            os.close(controller)
            os.close(terminal)
    return subprocess.run(
        [*command, *args],
        input=stdin or "",
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


@dataclass(frozen=True)
class DemoVaultbox:
    vaultbox: vaultboxes.Vaultbox
    username: str
    password: str


async def make_user(databases: Databases, email: str) -> platform.User:
    conn = await databases.connect("motorical")
    try:
        return await platform.create_user(conn, email)
    finally:
        await conn.close()


async def make_motorblock(
    databases: Databases,
    *,
    username: str,
    password: str,
    domain: str,
    rate_limit: int = 100,
    email: str | None = None,
) -> platform.MotorBlock:
    conn = await databases.connect("motorical")
    try:
        user = await platform.create_user(conn, email or f"{username}@owner.test")
        return await platform.create_motorblock(
            conn,
            user_id=user.id,
            username=username,
            password_hash=hash_password(password, TEST_BCRYPT_COST),
            domain=domain,
            rate_limit_per_hour=rate_limit,
        )
    finally:
        await conn.close()


async def make_vaultbox(
    databases: Databases,
    address: str,
    *,
    password: str = "secret-pass",
    kinds: tuple[str, ...] = ("smtp", "imap"),
    status: str = "active",
    user_id: Any = None,
) -> DemoVaultbox:
    """A vaultbox with credentials of `kinds` sharing one username."""
    alias, domain = vaultboxes.split_address(address)
    conn = await databases.connect()
    try:
        box = await vaultboxes.create_vaultbox(
            conn, user_id=user_id or uuid.uuid4(), alias=alias, domain=domain, name=None
        )
        username = credentials.new_username(domain)
        for kind in kinds:
            await credentials.create_credential(
                conn,
                kind=kind,
                vaultbox_id=box.id,
                username=username,  # type: ignore[arg-type]
                password_hash=hash_password(password, TEST_BCRYPT_COST),
            )
        if status != "active":
            await conn.execute("UPDATE vaultboxes SET status = $2 WHERE id = $1", box.id, status)
            box = dataclasses.replace(box, status=status)
        return DemoVaultbox(box, username, password)
    finally:
        await conn.close()


async def set_limits(databases: Databases, vaultbox_id: Any, limits: dict[str, Any]) -> None:
    """The vaultbox's `limits` (as the platform sets them: quota, sending limit...)."""
    conn = await databases.connect()
    try:
        await conn.execute(
            "UPDATE vaultboxes SET limits = $2::jsonb WHERE id = $1",
            vaultbox_id,
            json.dumps(limits),
        )
    finally:
        await conn.close()


def bytes_in_flight(service: str) -> float:
    """encimap_bytes_in_flight{service} of the services running in this process."""
    return REGISTRY.get_sample_value("encimap_bytes_in_flight", {"service": service}) or 0.0
