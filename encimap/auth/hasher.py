"""bcrypt verification off the event loop: a bounded thread pool with a bounded queue.

bcrypt releases the GIL, so N threads verify N passwords at once. When every worker is busy
and the queue is full, a new request is refused at once (`QueueFull`) instead of waiting behind
a backlog that would only time out in the client.

A check without a stored hash (an unknown user) runs against a dummy hash of the cost the
caller names, so it costs what checking a real hash of that cost costs.
"""

from __future__ import annotations

import asyncio
import os
import re
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
        self._dummy_hashes: dict[int, bytes] = {}  # by cost

    async def start(self) -> None:
        """Make the dummy hash of the configured cost (others are made when first asked for)."""
        await self._dummy_hash(self.cost)

    async def _dummy_hash(self, cost: int) -> bytes:
        dummy = self._dummy_hashes.get(cost)
        if dummy is None:
            loop = asyncio.get_running_loop()
            salt = bcrypt.gensalt(rounds=cost)
            dummy = await loop.run_in_executor(
                self._executor, bcrypt.hashpw, os.urandom(16).hex().encode(), salt
            )
            self._dummy_hashes[cost] = dummy
        return dummy

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def verify(
        self, password: str, password_hash: str | None, dummy_cost: int | None = None
    ) -> bool:
        """Whether `password` matches `password_hash`; None checks a dummy hash (False) of
        `dummy_cost` (default: the configured cost)."""
        if self._in_flight >= self.capacity:
            raise QueueFull
        candidate = password.encode()
        usable = 0 < len(candidate) <= MAX_PASSWORD_BYTES and password_hash is not None
        if not 0 < len(candidate) <= MAX_PASSWORD_BYTES:
            candidate = b"-"  # still pay the full cost, so the answer takes as long
        self._in_flight += 1
        try:
            if password_hash is not None:
                stored = password_hash.encode()
            else:
                stored = await self._dummy_hash(dummy_cost or self.cost)
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


_BCRYPT_COST = re.compile(r"\$2[abxy]?\$(\d\d)\$")


def cost_of(password_hash: str | None) -> int | None:
    """The cost factor of a bcrypt hash (`$2b$12$...` -> 12); None for anything else."""
    found = _BCRYPT_COST.match(password_hash or "")
    cost = int(found.group(1)) if found else 0
    return cost if 4 <= cost <= 31 else None
