"""A replicated PostgreSQL cluster on loopback: etcd, three PostgreSQL 15 nodes under Patroni
(synchronous mode), and optionally PgBouncer in transaction pooling mode in front of it.

Debian's `etcd-server`, `patroni` and `pgbouncer` provide the programs. PostgreSQL (and so
Patroni, which starts it) runs as the `postgres` system user when the tests run as root;
etcd and PgBouncer run as that user too, so every file they write stays theirs.

Timing: `loop_wait` 1 s and `ttl` 10 s, so a switchover or a crash is noticed within about a
second; `primary_start_timeout: 0` makes Patroni fail over at once when the primary's
postmaster dies instead of restarting it in place.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from encimap import db, migrations
from encimap.pgcluster import SERVICE_USER, free_port, server_bindir
from tests.intake_support import LMTPClient
from tests.support import Databases

SCOPE = "encimap-ha"
PROGRAMS = ("etcd", "patroni", "patronictl", "pgbouncer")


def missing_programs() -> list[str]:
    return [name for name in PROGRAMS if shutil.which(name) is None]


class HAError(Exception):
    pass


def _as_service_user() -> dict:
    """Popen arguments that run a child as the postgres user when we are root."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(SERVICE_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SERVICE_USER, SERVICE_USER)


def _get_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


@dataclass
class Node:
    name: str
    directory: Path
    pg_port: int
    api_port: int
    process: subprocess.Popen | None = None

    @property
    def datadir(self) -> Path:
        return self.directory / "data"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.pg_port}"

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None


@dataclass
class PatroniCluster:
    """etcd plus three Patroni nodes. `start()` returns once a leader and a synchronous
    standby are in place."""

    base: Path
    nodes: list[Node] = field(default_factory=list)
    etcd: subprocess.Popen | None = None
    etcd_port: int = 0

    @classmethod
    def create(cls) -> PatroniCluster:
        # Not under pytest's tmp_path: another pytest run resets /tmp/pytest-of-root to 0700.
        base = Path(tempfile.mkdtemp(prefix="encimap-ha-"))
        base.chmod(0o755)
        _own(base)
        return cls(base)

    # --- life -------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        self._start_etcd()
        for index in range(3):
            directory = self.base / f"node{index + 1}"
            directory.mkdir()
            _own(directory)
            node = Node(f"node{index + 1}", directory, free_port(), free_port())
            self._write_config(node)
            self.nodes.append(node)
        # The first node bootstraps alone; the others then copy it with pg_basebackup.
        self._start_patroni(self.nodes[0])
        self.wait_for(lambda: self.leader() is not None, timeout, "a leader")
        for node in self.nodes[1:]:
            self._start_patroni(node)
        self.wait_for(
            lambda: len(self.running_members()) == 3 and self.sync_standby() is not None,
            timeout,
            "three running members with a synchronous standby",
        )

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(30)
                except subprocess.TimeoutExpired:
                    node.process.kill()
            pid = node.postmaster_pid()
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.etcd is not None:
            self.etcd.terminate()
            try:
                self.etcd.wait(10)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def _start_etcd(self) -> None:
        self.etcd_port, peer = free_port(), free_port()
        data = self.base / "etcd"
        data.mkdir()
        _own(data)
        client, peer_url = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{peer}"
        self.etcd = subprocess.Popen(
            [
                "etcd",
                "--name=etcd1",
                f"--data-dir={data}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=etcd1={peer_url}",
                "--log-level=error",
            ],
            stdout=(self.base / "etcd.log").open("w"),
            stderr=subprocess.STDOUT,
            **_as_service_user(),
        )
        self.wait_for(self._etcd_healthy, 30, "etcd")

    def _etcd_healthy(self) -> bool:
        try:
            return _get_json(f"http://127.0.0.1:{self.etcd_port}/health").get("health") == "true"
        except (OSError, ValueError):
            return False

    def _write_config(self, node: Node) -> None:
        hba = [
            "local all all trust",
            "local replication all trust",
            "host all all 127.0.0.1/32 trust",
            "host replication all 127.0.0.1/32 trust",
        ]
        config = {
            "scope": SCOPE,
            "name": node.name,
            "log": {"level": "INFO", "dir": str(node.directory)},
            "restapi": {
                "listen": f"127.0.0.1:{node.api_port}",
                "connect_address": f"127.0.0.1:{node.api_port}",
            },
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_port}"},
            "bootstrap": {
                "dcs": {
                    "ttl": 10,
                    "loop_wait": 1,
                    "retry_timeout": 3,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True,
                    "primary_start_timeout": 0,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "remove_data_directory_on_diverged_timelines": True,
                        "parameters": {
                            "synchronous_commit": "on",
                            "max_connections": 200,
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "128MB",
                            # Loopback test cluster on a shared machine: no fsync. What the
                            # tests kill is a process, not the machine: the page cache stays.
                            "fsync": "off",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, {"auth": "trust"}],
                "pg_hba": hba,
            },
            "postgresql": {
                "listen": node.address,
                "connect_address": node.address,
                "data_dir": str(node.datadir),
                "bin_dir": str(server_bindir()),
                "pgpass": str(node.directory / "pgpass"),
                "pg_hba": hba,
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(node.directory)},
            },
        }
        path = node.directory / "patroni.yml"
        # JSON is YAML: Patroni reads it as its configuration file.
        path.write_text(json.dumps(config, indent=1))
        _own(path)

    def _start_patroni(self, node: Node) -> None:
        node.process = subprocess.Popen(
            ["patroni", str(node.directory / "patroni.yml")],
            stdout=(node.directory / "patroni.out").open("w"),
            stderr=subprocess.STDOUT,
            cwd=node.directory,
            env={"PATH": os.environ["PATH"], "HOME": str(node.directory), "LANG": "C.UTF-8"},
            **_as_service_user(),
        )

    # --- state ------------------------------------------------------------------------

    def members(self) -> list[dict]:
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                return _get_json(f"http://127.0.0.1:{node.api_port}/cluster")["members"]
            except (OSError, ValueError, KeyError):
                continue
        return []

    def running_members(self) -> list[dict]:
        return [m for m in self.members() if m.get("state") in ("running", "streaming")]

    def _member_node(self, role: str) -> Node | None:
        for member in self.members():
            if member.get("role") == role and member.get("state") in ("running", "streaming"):
                return self.node(member["name"])
        return None

    def leader(self) -> Node | None:
        return self._member_node("leader")

    def sync_standby(self) -> Node | None:
        return self._member_node("sync_standby")

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def url(self, database: str, *, attrs: str = "read-write") -> str:
        hosts = ",".join(node.address for node in self.nodes)
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs={attrs}"

    def leader_url(self, database: str) -> str:
        leader = self.leader()
        if leader is None:
            raise HAError("no leader")
        return f"postgresql://postgres@{leader.address}/{database}"

    @staticmethod
    def wait_for(condition, timeout: float, what: str, interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(interval)
        raise HAError(f"timed out waiting for {what}")

    def wait_healthy(self, timeout: float = 90.0) -> None:
        """Until there is a leader, a synchronous standby and three running members (the old
        primary rejoined after a failover)."""
        self.wait_for(
            lambda: (
                len(self.running_members()) == 3
                and self.leader() is not None
                and self.sync_standby() is not None
            ),
            timeout,
            "the cluster to be whole again",
        )

    # --- faults -------------------------------------------------------------------------

    def restart(self, node: Node) -> None:
        """Start a node's Patroni again (after its process was killed); it rejoins."""
        if node.process is not None and node.process.poll() is None:
            return
        if node.process is not None:
            node.process.wait()
        self._start_patroni(node)

    def patronictl(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["patronictl", "-c", str(self.nodes[0].directory / "patroni.yml"), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": os.environ["PATH"], "HOME": str(self.base), "LANG": "C.UTF-8"},
        )
        if result.returncode != 0:
            raise HAError(f"patronictl {' '.join(args)}: {result.stderr or result.stdout}")
        return result

    def failover(self) -> tuple[Node, Node]:
        """`patronictl failover` to the synchronous standby: (old leader, candidate)."""
        old, candidate = self.leader(), self.sync_standby()
        if old is None or candidate is None:
            raise HAError("no leader or no synchronous standby to fail over to")
        self.patronictl("failover", SCOPE, "--candidate", candidate.name, "--force")
        return old, candidate

    def kill_primary_postmaster(self) -> Node:
        """SIGKILL the leader's postmaster; Patroni then fails over (primary_start_timeout 0)."""
        old = self.leader()
        pid = old.postmaster_pid() if old is not None else None
        if old is None or pid is None:
            raise HAError("no leader to kill")
        os.kill(pid, signal.SIGKILL)
        return old

    def wait_new_leader(self, old: Node, timeout: float = 60.0) -> Node:
        self.wait_for(
            lambda: (leader := self.leader()) is not None and leader is not old,
            timeout,
            "a new leader",
        )
        leader = self.leader()
        assert leader is not None
        return leader


@dataclass
class PgBouncer:
    """PgBouncer in transaction pooling mode in front of one PostgreSQL server."""

    directory: Path
    port: int = 0
    process: subprocess.Popen | None = None

    def start(self, server: str, databases: list[str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _own(self.directory)
        self.port = free_port()
        host, port = server.rsplit(":", 1)
        lines = ["[databases]"]
        lines += [f"{name} = host={host} port={port} dbname={name}" for name in databases]
        lines += [
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            f"unix_socket_dir = {self.directory}",
            "auth_type = trust",
            f"auth_file = {self.directory / 'users.txt'}",
            "pool_mode = transaction",
            "default_pool_size = 20",
            "max_client_conn = 500",
            f"logfile = {self.directory / 'pgbouncer.log'}",
            f"pidfile = {self.directory / 'pgbouncer.pid'}",
        ]
        (self.directory / "users.txt").write_text('"postgres" ""\n')
        config = self.directory / "pgbouncer.ini"
        config.write_text("\n".join(lines) + "\n")
        for path in (config, self.directory / "users.txt"):
            _own(path)
        self.process = subprocess.Popen(
            ["pgbouncer", str(config)],
            stdout=(self.directory / "pgbouncer.out").open("w"),
            stderr=subprocess.STDOUT,
            **_as_service_user(),
        )
        PatroniCluster.wait_for(self._accepting, 15, "PgBouncer")

    def _accepting(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise HAError(f"pgbouncer exited: {(self.directory / 'pgbouncer.out').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


# --- databases and load ---------------------------------------------------------------------


async def prepare_databases(cluster: PatroniCluster, motorical: str, encimap: str) -> Databases:
    """Create and migrate both databases on the leader; the URLs name all three hosts."""
    conn = await asyncpg.connect(cluster.leader_url("postgres"))
    try:
        for name in (motorical, encimap):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    for database, name in zip(db.DATABASES, (motorical, encimap), strict=True):
        conn = await asyncpg.connect(cluster.url(name))
        try:
            await migrations.upgrade(conn, database)
        finally:
            await conn.close()
    return Databases(cluster, cluster.url(motorical), cluster.url(encimap))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Outcome:
    message_id: str
    code: int  # the final reply to the message: RCPT's when it was refused, else DATA's
    at: float  # time.monotonic() of that reply


def flood_message(message_id: str) -> bytes:
    return (
        f"From: <flood@example.org>\r\nTo: <ha@ha.test>\r\nSubject: flood\r\n"
        f"Message-ID: <{message_id}>\r\n\r\n" + "Flood of the failover test.\r\n" * 8
    ).encode()


async def lmtp_flood(
    port: int,
    recipient: str,
    message_ids: list[str],
    connections: int,
    *,
    third_answered: asyncio.Event | None = None,
    backoff: float = 0.1,
) -> list[Outcome]:
    """Deliver `message_ids` over `connections` LMTP connections, each message once, in
    order per connection; returns every outcome. A connection pauses `backoff` seconds
    after a 4xx, as an MTA's queue would (otherwise a short outage burns through all the
    messages at once). `third_answered` is set when a third of the messages are answered."""
    outcomes: list[Outcome] = []
    third = len(message_ids) // 3

    async def one_connection(ids: list[str]) -> None:
        client = await LMTPClient.connect(port)
        try:
            assert (await client.command("LHLO flood.test")).startswith("250")
            for message_id in ids:
                rcpt, data = await client.transaction(
                    "flood@example.org", [recipient], flood_message(message_id)
                )
                reply = data[0] if data else rcpt[0]
                outcomes.append(Outcome(message_id, int(reply[:3]), time.monotonic()))
                if third_answered is not None and len(outcomes) >= third:
                    third_answered.set()
                if reply.startswith("4"):
                    await asyncio.sleep(backoff)
        finally:
            await client.close()

    await asyncio.gather(
        *(one_connection(message_ids[index::connections]) for index in range(connections))
    )
    return outcomes


async def stored_counts(databases: Databases, vaultbox_id: object) -> dict[str, int]:
    """How many rows each Message-ID has in the vaultbox, read from the primary."""
    conn = await databases.connect()
    try:
        rows = await conn.fetch(
            "SELECT message_id, count(*) AS n FROM encrypted_emails WHERE vaultbox_id = $1"
            " GROUP BY message_id",
            vaultbox_id,
        )
    finally:
        await conn.close()
    return {row["message_id"].strip("<>"): row["n"] for row in rows}
