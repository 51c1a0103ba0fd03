"""Process life of `encimap serve`: readiness, watchdog, stop, metrics and health endpoints."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.service_support import NotifySocket, http_get, serve_process, service_config
from tests.support import REPO, Databases


@pytest.fixture
def notify_socket(tmp_path: Path):
    sock = NotifySocket(tmp_path)
    yield sock
    sock.close()


def _greeting(service: str, ports: dict[str, int], socket_dir: Path) -> bytes:
    """Connect the way a client of `service` does and read its first line."""
    if service == "authsocket":
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(5)
        client.connect(str(socket_dir / "auth"))
        client.sendall(b"VERSION\t1\t2\nCPID\t1\n")
    else:
        client = socket.create_connection(("127.0.0.1", ports[service]), timeout=5)
    with client:
        return client.recv(200)


@pytest.mark.parametrize(
    ("service", "greeting"),
    [
        ("intake", b"220 "),
        ("submission", b"220 "),
        ("imap", b"* OK"),
        ("authsocket", b"VERSION\t1\t2"),
    ],
)
def test_ready_only_when_listening_then_watchdog_and_clean_stop(
    tmp_path: Path, databases: Databases, notify_socket, tls_files, service, greeting
):
    """READY=1 comes after the listener accepts (a client connecting at that moment is
    served), WATCHDOG=1 keeps coming from the loop, SIGTERM sends STOPPING=1 and the process
    exits 0. (A session in flight finishing during the drain: test_intake_process.py.)"""
    cfg, ports = service_config(tmp_path / "c.toml", databases, tls_files)
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"}
    with serve_process(cfg, service, env=env) as process:
        notify_socket.wait_for("READY=1", process=process)
        assert _greeting(service, ports, tmp_path).startswith(greeting)
        assert http_get(f"http://127.0.0.1:{ports['metrics']}/healthz") == (200, "ok\n")
        for _ in range(3):
            notify_socket.wait_for("WATCHDOG=1", timeout=2)
        process.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING=1")
        assert process.wait(timeout=30) == 0


def test_readyz_follows_the_database(tmp_path: Path, notify_socket, tls_files, private_cluster):
    """503 while PostgreSQL is down, 200 again once it is back, without a restart."""
    cluster = private_cluster.cluster
    cfg, ports = service_config(tmp_path / "c.toml", private_cluster, tls_files)
    port = ports["metrics"]
    with serve_process(cfg, "all", env={"NOTIFY_SOCKET": str(notify_socket.path)}) as process:
        notify_socket.wait_for("READY=1", process=process)
        url = f"http://127.0.0.1:{port}/readyz"
        status, body = http_get(url)
        assert status == 200, body
        # One line per pool: which server it is connected to, and that it is the primary.
        assert f"encimap/encimap_intake: ok, primary 127.0.0.1:{cluster.port} (" in body
        assert f"motorical/encimap_auth: ok, primary 127.0.0.1:{cluster.port} (" in body
        cluster.stop()
        status, body = http_get(url)
        assert status == 503, body
        cluster.start()
        deadline = time.monotonic() + 20
        while http_get(url)[0] != 200:
            assert time.monotonic() < deadline, "readyz did not recover"
            time.sleep(0.2)
        metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        assert "encimap_db_query_seconds_count" in metrics


def test_bad_http_requests_get_clear_answers(
    tmp_path: Path, databases: Databases, notify_socket, tls_files
):
    cfg, ports = service_config(tmp_path / "c.toml", databases, tls_files)
    port = ports["metrics"]
    with serve_process(cfg, "all", env={"NOTIFY_SOCKET": str(notify_socket.path)}) as process:
        notify_socket.wait_for("READY=1", process=process)
        assert http_get(f"http://127.0.0.1:{port}/nope")[0] == 404
        for endpoint in (port, ports["auth_http"]):  # metrics and nginx auth_http
            with socket.create_connection(("127.0.0.1", endpoint), timeout=5) as client:
                client.sendall(b"garbage without a request line\r\n\r\n")
                assert client.recv(100).startswith(b"HTTP/1.0 400 ")
            with socket.create_connection(("127.0.0.1", endpoint), timeout=5) as client:
                client.sendall(b"GET / HTTP/1.0\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
                assert client.recv(100).startswith(b"HTTP/1.0 400 ")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_socket_activation_serves_the_inherited_auth_socket(
    tmp_path: Path, databases: Databases, notify_socket, tls_files
):
    """systemd passes the listening socket as fd 3 with LISTEN_FDS=1; nothing else is bound."""
    activated = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(activated))
    listener.listen()
    cfg, _ports = service_config(tmp_path / "c.toml", databases, tls_files)
    fd = listener.fileno()
    command = (
        f"LISTEN_PID=$$ LISTEN_FDS=1 exec {sys.executable} -m encimap --config {cfg} "
        "serve authsocket"
    )
    process = subprocess.Popen(
        ["sh", "-c", command],
        preexec_fn=lambda: os.dup2(fd, 3),
        pass_fds=(3,),
        env={**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": str(notify_socket.path)},
    )
    listener.close()
    try:
        notify_socket.wait_for("READY=1", process=process)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(str(activated))
            client.sendall(b"VERSION\t1\t2\nCPID\t4242\n")
            handshake = b""
            while b"DONE\n" not in handshake:
                chunk = client.recv(4096)
                assert chunk, handshake
                handshake += chunk
        assert handshake.startswith(b"VERSION\t1\t2\nMECH\tPLAIN")
        assert not (tmp_path / "auth").exists(), "the configured socket must not be bound"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.starttls(context=context)
        return smtp.sock.getpeercert(binary_form=True)


def test_sighup_rereads_tls_files_named_in_the_new_configuration(
    tmp_path: Path, databases: Databases, notify_socket, tls_files, tls_ca
):
    """New sessions get the new certificate; an invalid file would keep the old one."""
    cfg, ports = service_config(tmp_path / "c.toml", databases, tls_files)
    other = tls_ca.issue_cert("mail.renewed.test", "127.0.0.1")
    new_cert, new_key = tmp_path / "new-chain.pem", tmp_path / "new-key.pem"
    new_cert.write_bytes(b"".join(blob.bytes() for blob in other.cert_chain_pems))
    other.private_key_pem.write_to_path(str(new_key))
    with serve_process(
        cfg, "submission", env={"NOTIFY_SOCKET": str(notify_socket.path)}
    ) as process:
        notify_socket.wait_for("READY=1", process=process)
        before = _served_certificate(ports["submission"])
        cfg.write_text(
            cfg.read_text()
            .replace(str(tls_files[0]), str(new_cert))
            .replace(str(tls_files[1]), str(new_key))
        )
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _served_certificate(ports["submission"]) == before:
            assert time.monotonic() < deadline, "SIGHUP did not load the new certificate"
            time.sleep(0.2)
        after = x509.load_der_x509_certificate(_served_certificate(ports["submission"]))
        assert "mail.renewed.test" in after.subject.rfc4514_string() or any(
            name.value == "mail.renewed.test"
            for name in after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        )
        cfg.write_text(cfg.read_text().replace("[tls]", "[tls]\nnonsense = 1"))
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert _served_certificate(ports["submission"]) != before  # kept, not reverted
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
