"""Debian's Dovecot as an oracle: a private, unprivileged instance on a loopback port that
serves given messages from a Maildir. Used by the IMAP tests (ENVELOPE, BODYSTRUCTURE and
RFC822.SIZE must match) and by bench/imap.py (the baseline).

Dovecot runs from its own config under a temporary directory; `stop()` ends it with `doveadm
stop`. Its mail user is `nobody`, which owns the Maildir (see FACTS.md).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from encimap.pgcluster import free_port

USER = "oracle"
PASSWORD = "oracle-pass"
MAIL_USER = "nobody"


def available() -> str | None:
    """None when Dovecot can run here, else why not (for pytest.skip)."""
    if shutil.which("dovecot") is None or shutil.which("doveadm") is None:
        return "Dovecot is not installed (Debian dovecot-imapd; scripts/system-deps.sh)"
    try:
        pwd.getpwnam(MAIL_USER)
    except KeyError:
        return f"no system user {MAIL_USER} for Dovecot's mail"
    if os.geteuid() != 0:
        return "Dovecot's private instance needs root to switch to its mail user"
    return None


_CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{base}/Maildir
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = 1
mail_fsync = never
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/home
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


class Dovecot:
    """A running private Dovecot serving `messages` (in order, UIDs 1..n) in INBOX."""

    def __init__(self, messages: list[bytes], *, flags: list[str] | None = None) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="encimap-dovecot-"))
        self.port = free_port()
        self.user, self.password = USER, PASSWORD
        self._write(messages)
        self.config_file = self.base / "dovecot.conf"

    def _write(self, messages: list[bytes]) -> None:
        mail = pwd.getpwnam(MAIL_USER)
        os.chmod(self.base, 0o755)  # noqa: S103 - Dovecot's unprivileged users must enter it
        maildir = self.base / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        now = int(time.time())
        for index, message in enumerate(messages):
            (maildir / "cur" / f"{now}.M{index}P1.oracle,S={len(message)}:2,").write_bytes(message)
        (self.base / "home").mkdir()
        (self.base / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        for path in [maildir, *maildir.rglob("*"), self.base / "home"]:
            os.chown(path, mail.pw_uid, mail.pw_gid)
        (self.base / "dovecot.conf").write_text(
            _CONFIG.format(base=self.base, uid=mail.pw_uid, gid=mail.pw_gid, port=self.port)
        )

    def start(self, timeout: float = 10.0) -> None:
        subprocess.run(["dovecot", "-c", str(self.config_file)], check=True, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                time.sleep(0.05)
        log = (self.base / "dovecot.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"Dovecot did not start on port {self.port}: {log}")

    def stop(self) -> None:
        subprocess.run(
            ["doveadm", "-c", str(self.config_file), "stop"],
            check=False,
            timeout=30,
            capture_output=True,
        )
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
