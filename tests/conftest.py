"""Test harness: one real PostgreSQL cluster per test session, fresh databases per module.

Fixtures
- `pg_cluster` (session): a private cluster started with initdb/pg_ctl (as root, through
  runuser as the postgres user); stopped at the end.
- `databases` (module): a fresh pair of migrated databases; returns a `Databases` with
  the URLs, a `Config` pointing at them and helpers to create data.
- `tls_ca`, `tls_files` (session): trustme CA and a server certificate for localhost.
- `upstream`: the submission's upstream MTA, an aiosmtpd sink (tests/submission_helpers.py).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
import uvloop

from encimap import logs
from encimap.pgcluster import LocalCluster
from tests.submission_helpers import sink
from tests.support import Databases, make_config, migrated_databases


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item):
    """Async tests (and the services they start in-process) run on uvloop, the loop
    `encimap serve` uses by default; tests/test_intake_process.py covers `asyncio`."""
    return {"uvloop": uvloop.new_event_loop}


_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalCluster]:
    base = Path(tempfile.mkdtemp(prefix="encimap-pg-"))
    cluster = LocalCluster(base / "data")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def _create_migrated(cluster: LocalCluster, tag: str) -> Databases:
    return migrated_databases(cluster, f"motorical_{tag}", f"encimap_{tag}")


@pytest.fixture(scope="module")
def databases(pg_cluster: LocalCluster) -> Databases:
    """Fresh migrated databases for one test module."""
    return _create_migrated(pg_cluster, f"m{os.getpid()}_{next(_counter)}")


@pytest.fixture
def fresh_databases(pg_cluster: LocalCluster) -> Databases:
    """Fresh migrated databases for one test."""
    return _create_migrated(pg_cluster, f"t{os.getpid()}_{next(_counter)}")


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


def _server_files(cert: trustme.LeafCert, directory: Path) -> tuple[Path, Path]:
    chain, key = directory / "fullchain.pem", directory / "privkey.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return chain, key


@pytest.fixture(scope="session")
def tls_files(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(certificate chain, key) PEM files for localhost / 127.0.0.1."""
    cert = tls_ca.issue_cert("localhost", "127.0.0.1")
    return _server_files(cert, tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def named_tls_files(
    tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """As `tls_files`, with localhost also as the subject's common name: fetchmail and
    offlineimap (implicit TLS) refuse a certificate that names its host only in
    subjectAltName ("Server name not specified in certificate!")."""
    cert = tls_ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    return _server_files(cert, tmp_path_factory.mktemp("named-tls"))


@pytest.fixture(scope="session")
def ca_file(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test CA's certificate as a PEM file, for clients run as processes."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def config(databases: Databases, tls_files: tuple[Path, Path]):
    return make_config(databases, tls_files)


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    logs.configure("warning", "console")


@pytest.fixture
def upstream():
    """The submission tests' upstream MTA: (aiosmtpd controller, SinkHandler)."""
    with sink() as (controller, handler):
        yield controller, handler


@pytest.fixture
def private_cluster() -> Iterator[Databases]:
    """Migrated databases on a cluster of this test's own, which the test may stop and start.

    Not under pytest's tmp_path: another pytest run on the machine resets
    /tmp/pytest-of-root to 0700, which would lock the postgres user out.
    """
    base = Path(tempfile.mkdtemp(prefix="encimap-private-pg-"))
    cluster = LocalCluster(base / "pg")
    cluster.start()
    try:
        yield migrated_databases(cluster, "motorical_db", "encimap_db")
    finally:
        cluster.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
