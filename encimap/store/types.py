from __future__ import annotations

from typing import TypeAlias

import asyncpg

# Anything that runs queries: a pool, a connection, or a pool's proxied connection.
Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
