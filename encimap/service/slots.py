"""Counts shared by all the processes of one service (`workers = N`): the connections one user,
or one client address, has open in any of them.

A count is a run of one-byte slots in a file, and a connection holds one slot with an
open-file-description lock (F_OFD_SETLK) until it closes. The kernel drops the locks of a
process that dies, so a crashed worker leaves nothing counted and nothing has to be cleaned up:
a slot is either locked or free. Taking a slot tries the slots from a random one on, so it
costs one system call while most are free, and `limit` calls to find that all are held.

Each kind of count is one sparse file: a key's run of slots starts at a 46-bit hash of the key
times SHARED_LIMIT (2**16), so no file grows and no file per key is left behind. Two keys share
a run only if their hashes are equal (for a million keys open at once, odds below one in a
hundred that any two do); they then share one limit.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random
import shutil
import struct
import tempfile
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol

from encimap.config import SHARED_LIMIT

DIRECTORY_ENV = "ENCIMAP_SLOTS"
_HASH_BITS = 46


class Counts(Protocol):
    """Connections open per key, each one holding a token from `take` until `give_back`."""

    def take(self, key: str, limit: int) -> Any: ...

    def give_back(self, token: Any) -> None: ...

    def held(self, key: str) -> int:
        """Tokens of `key` this process holds."""
        ...


class LocalCounter:
    """Counts of one process only (a service with one process): SharedCounter's interface."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def take(self, key: str, limit: int) -> str | None:
        if self._counts[key] >= limit:
            return None
        self._counts[key] += 1
        return key

    def give_back(self, token: str) -> None:
        self._counts[token] -= 1
        if self._counts[token] <= 0:
            del self._counts[token]

    def held(self, key: str) -> int:
        return self._counts[key]


class SharedCounter:
    """One kind of count (connections per user, per client address) over every process that
    opens the same `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # One lock owner per process (this descriptor), so the process itself must not hand
        # out a slot it already holds: the kernel would grant it again.
        self._held: set[int] = set()

    def take(self, key: str, limit: int) -> int | None:
        """A slot among `key`'s first `limit`, as a token for `give_back`; None when another
        connection of any process holds each of them."""
        if not 0 < limit <= SHARED_LIMIT:
            raise ValueError(f"a shared limit is 1 to {SHARED_LIMIT}, not {limit}")
        base = _run_of(key)
        start = random.randrange(limit)
        for step in range(limit):
            offset = base + (start + step) % limit
            if offset not in self._held and self._lock(offset, fcntl.F_WRLCK):
                self._held.add(offset)
                return offset
        return None

    def give_back(self, token: int) -> None:
        if token in self._held:
            self._held.discard(token)
            self._lock(token, fcntl.F_UNLCK)

    def held(self, key: str) -> int:
        base = _run_of(key)
        return sum(1 for offset in self._held if base <= offset < base + SHARED_LIMIT)

    def close(self) -> None:
        os.close(self._fd)
        self._held.clear()

    def _lock(self, offset: int, kind: int) -> bool:
        request = struct.pack("hhqqi4x", kind, os.SEEK_SET, offset, 1, 0)
        try:
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, request)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True


def _run_of(key: str) -> int:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> (64 - _HASH_BITS)) * SHARED_LIMIT


def shared_directory(stack: AsyncExitStack) -> Path:
    """The directory the processes of this service count in: the first process makes a private
    one (removed when `stack` closes) and its workers find it in their environment."""
    if inherited := os.environ.get(DIRECTORY_ENV):
        return Path(inherited)
    path = Path(tempfile.mkdtemp(prefix="encimap-counts-"))
    stack.callback(shutil.rmtree, path, ignore_errors=True)
    return path
