"""systemd socket activation: listening sockets passed as fds 3.. with $LISTEN_FDS."""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


def inherited_sockets(environ: dict[str, str] | None = None) -> list[socket.socket]:
    """The sockets systemd passed to this process (once: the variables are removed)."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(env.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets
