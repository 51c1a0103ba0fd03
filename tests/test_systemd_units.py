"""The systemd units: valid for systemd itself, and hardened as DESIGN.md asks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from encimap import config
from tests.support import REPO

UNITS = REPO / "systemd"
SERVICES = ["intake", "submission", "authsocket", "imap", "wkd"]
HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "NoNewPrivileges": "true",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter": "@system-service",
}

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _read(name: str) -> dict[str, dict[str, list[str]]]:
    """Unit file sections as {section: {key: [values in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


@pytest.fixture(scope="module")
def installed_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units with ExecStart pointing at this checkout's encimap, which exists here."""
    directory = tmp_path_factory.mktemp("units")
    executable = Path(sys.executable).with_name("encimap")
    for unit in UNITS.iterdir():
        (directory / unit.name).write_text(
            unit.read_text().replace("/opt/encimap/venv/bin/encimap", str(executable))
        )
    return directory


def test_systemd_analyze_verify_accepts_every_unit_without_a_warning(installed_units: Path):
    units = sorted(str(path) for path in installed_units.iterdir())
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        cwd=installed_units,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@pytest.mark.parametrize("service", SERVICES)
def test_long_running_services_are_notify_with_watchdog_and_hardened(service: str):
    unit = _read(f"encimap-{service}.service")["Service"]
    assert unit["Type"] == ["notify"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["WatchdogSec"] and unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["User"] == ["encimap"]
    for key, value in HARDENING.items():
        assert value in unit.get(key, []), f"{service}: {key}={value} missing"
    assert any(v.startswith("motorical-db-password:") for v in unit["LoadCredential"])


@pytest.mark.parametrize("service", SERVICES)
def test_only_imap_may_bind_privileged_ports(service: str):
    unit = _read(f"encimap-{service}.service")["Service"]
    expected = ["CAP_NET_BIND_SERVICE"] if service == "imap" else [""]
    assert unit["CapabilityBoundingSet"] == expected
    assert unit["AmbientCapabilities"] == expected


def test_auth_socket_is_socket_activated_for_postfix():
    socket_unit = _read("encimap-authsocket.socket")["Socket"]
    assert "/var/spool/postfix/private/encimap-auth" in socket_unit["ListenStream"]
    assert socket_unit["SocketGroup"] == ["postfix"] and socket_unit["SocketMode"] == ["0660"]
    assert "encimap-authsocket.socket" in _read("encimap-authsocket.service")["Unit"]["Requires"]


def test_migrate_is_a_oneshot_before_the_services():
    assert _read("encimap-migrate.service")["Service"]["Type"] == ["oneshot"]
    for service in SERVICES:
        assert "encimap-migrate.service" in " ".join(
            _read(f"encimap-{service}.service")["Unit"]["After"]
        )


@pytest.mark.parametrize("service", SERVICES)
def test_offline_security_exposure_is_low(installed_units: Path, service: str):
    result = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            "--man=no",
            str(installed_units / f"encimap-{service}.service"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert level, result.stdout + result.stderr
    assert float(level[1]) <= 2.5


@pytest.mark.parametrize("service", SERVICES)
def test_descriptor_limit_covers_the_connection_limits(service: str):
    """Issue 14 #6: at the default 1,024 descriptors, ~1,000 idle sockets locked clients out."""
    [value] = _read(f"encimap-{service}.service")["Service"]["LimitNOFILE"]
    connections = getattr(config.Config(), service).max_connections
    assert connections > 0
    assert int(value) >= 2 * connections + 256  # each may hold a second socket (the relay)
