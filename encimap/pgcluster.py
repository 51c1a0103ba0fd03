"""A private PostgreSQL cluster for the demo (`encimap dev`) and the test suite.

PostgreSQL refuses to run as root, so as root the server binaries run as the `postgres` system
user through `runuser`, and the data directory and its parents are made reachable for it. The
cluster listens on loopback only and trusts loopback connections: it is a demo and test
database, never a production one.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from encimap import db, migrations

SERVICE_USER = "postgres"
SUPERUSER = "postgres"


class ClusterError(Exception):
    pass


def server_bindir() -> Path:
    """Where initdb/pg_ctl live: `pg_config --bindir`, else the newest Debian install."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if versions:
        return versions[0].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ClusterError("PostgreSQL server binaries (initdb, pg_ctl) not found")


# Ports handed out below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999
# by default): a port the kernel picks from that range is free only until some outgoing
# connection is given it, which on a busy test machine can happen before the server binds it.
_PORTS = range(20000, 32768)


def free_port() -> int:
    """A loopback TCP port that is free now, outside the ephemeral range."""
    for port in random.sample(_PORTS, 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port between 20000 and 32767")


@dataclass
class LocalCluster:
    datadir: Path
    port: int = 0

    @property
    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(server_bindir() / args[0]), *args[1:]]
        if self._as_root:
            if self.datadir.exists():
                # a parent may have been closed since the last command (pytest makes its
                # temporary root 0700 whenever a session starts)
                _open_path_for(self.datadir)
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise ClusterError(f"{args[0]} failed: {(result.stderr or result.stdout).strip()}")
        return result

    @property
    def initialised(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def init(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            shutil.chown(self.datadir, SERVICE_USER, SERVICE_USER)
        self.datadir.chmod(0o700)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )

    def start(self) -> None:
        if not self.initialised:
            self.init()
        self.port = self.port or free_port()
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories='{self.datadir}' -c fsync=off "
            "-c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.datadir / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False)

    @property
    def running(self) -> bool:
        result = self._run("pg_ctl", "-D", str(self.datadir), "status", check=False)
        return result.returncode == 0

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        """The URL through the cluster's Unix socket (in its data directory)."""
        return f"postgresql://{user}@/{database}?host={self.datadir}&port={self.port}"

    def create_database(self, name: str) -> None:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)

    def database_exists(self, name: str) -> bool:
        result = self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{name}'",  # noqa: S608 - own constant
            "postgres",
        )
        return result.stdout.strip() == "1"


async def prepare_databases(
    cluster: LocalCluster, motorical_name: str, encimap_name: str
) -> tuple[str, str]:
    """Create the platform and the encimap database in `cluster` unless they exist, apply
    every pending migration, and return their URLs (motorical, encimap)."""
    urls = []
    for database, name in zip(db.DATABASES, (motorical_name, encimap_name), strict=True):
        if not cluster.database_exists(name):
            cluster.create_database(name)
        conn = await asyncpg.connect(cluster.url(name))
        try:
            await migrations.upgrade(conn, database)
        finally:
            await conn.close()
        urls.append(cluster.url(name))
    return urls[0], urls[1]


def _open_path_for(path: Path) -> None:
    """Let the unprivileged server user traverse every parent of `path` (o+x, nothing more)."""
    for parent in reversed(path.resolve().parents):
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
