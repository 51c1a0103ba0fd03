"""A private Postfix instance for tests: its own config, queue and data directories in a
temporary directory, one smtpd on a loopback port, no chroot, logging to a file.

`postfix -c DIR start` runs as root and its daemons drop to `mail_owner` (postfix), so every
socket Postfix must reach (the auth socket, an LMTP socket) must be reachable by that user.
Use `PrivatePostfix(...)` as a context manager; `skip_reason()` says why it cannot run here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from encimap.pgcluster import free_port

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"

# Services a minimal instance needs (smtpd, and what it talks to for queueing a message).
_MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def skip_reason() -> str | None:
    if not Path(POSTFIX).exists():
        return "Postfix is not installed (Debian package `postfix`, see scripts/system-deps.sh)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (postfix drops to its mail_owner)"
    return None


def reachable_dir(prefix: str) -> Path:
    """A fresh directory the `postfix` user can enter (pytest's tmp_path is mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class PrivatePostfix:
    def __init__(self, settings: dict[str, str], *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = reachable_dir("encimap-postfix-")
        self.config_dir = self.base / "etc"
        self.settings = settings

    @property
    def log_file(self) -> Path:
        return self.base / "maillog"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def logged(self, text: str, timeout: float = 10.0) -> bool:
        """Whether `text` reaches the log within `timeout` (postlogd writes it asynchronously)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _main_cf(self) -> str:
        base = {
            "compatibility_level": "3.7",
            "queue_directory": str(self.base / "queue"),
            "data_directory": str(self.base / "data"),
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "postfix.encimap.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.base),
            "smtpd_banner": "$myhostname ESMTP",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
        }
        base.update(self.settings)
        return "".join(f"{key} = {value}\n" for key, value in base.items())

    def start(self) -> None:
        self.config_dir.mkdir()
        (self.base / "queue").mkdir()
        (self.base / "data").mkdir()
        shutil.chown(self.base / "data", "postfix", "postfix")
        (self.config_dir / "main.cf").write_text(self._main_cf())
        (self.config_dir / "master.cf").write_text(
            _MASTER_CF.format(listen=f"127.0.0.1:{self.port}")
        )
        self._postfix("check")
        self._postfix("start")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._accepting():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"private Postfix did not start:\n{self.log()}")

    def _accepting(self) -> bool:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), "stop"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        # master waits for its children; give it a moment before the directory goes. It
        # leaves master.pid behind, so wait for the process, not the file.
        pid_file = self.base / "queue" / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        deadline = time.monotonic() + 10
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def _postfix(self, action: str) -> None:
        result = subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), action],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"postfix {action} failed: {result.stderr}{self.log()[-2000:]}")

    def __enter__(self) -> PrivatePostfix:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        self.cleanup()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: whether it exists (master runs as root, as the tests do)
    except ProcessLookupError:
        return False
    return True
