"""bcrypt verification off the event loop: a bounded thread pool with a bounded queue.

bcrypt releases the GIL, so N threads verify N passwords at once. When every worker is busy
and the queue is full, a new request is refused at once (`QueueFull`) instead of waiting behind
a backlog that would only time out in the client.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import bcrypt

from encimap.auth.passwords import MAX_PASSWORD_BYTES


class QueueFull(Exception):
    pass


class BcryptVerifier:
    def __init__(self, *, workers: int, queue: int, cost: int) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.capacity = self.workers + queue
        self.cost = cost
        self._in_flight = 0
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="bcrypt")
        self._dummy_hash: bytes | None = None

    async def start(self) -> None:
        """Make the dummy hash unknown users are checked against (same cost as real ones)."""
        if self._dummy_hash is None:
            loop = asyncio.get_running_loop()
            salt = bcrypt.gensalt(rounds=self.cost)
            self._dummy_hash = await loop.run_in_executor(
                self._executor, bcrypt.hashpw, os.urandom(16).hex().encode(), salt
            )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Whether `password` matches `password_hash`; None checks the dummy hash (False)."""
        if self._in_flight >= self.capacity:
            raise QueueFull
        assert self._dummy_hash is not None, "start() first"
        candidate = password.encode()
        stored = password_hash.encode() if password_hash is not None else self._dummy_hash
        usable = 0 < len(candidate) <= MAX_PASSWORD_BYTES and password_hash is not None
        if not 0 < len(candidate) <= MAX_PASSWORD_BYTES:
            candidate = b"-"  # still pay the full cost, so the answer takes as long
        self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            matched = await loop.run_in_executor(self._executor, _checkpw, candidate, stored)
        finally:
            self._in_flight -= 1
        return matched and usable


def _checkpw(password: bytes, stored: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, stored)
    except ValueError:  # not a bcrypt hash: no password matches it
        return False
