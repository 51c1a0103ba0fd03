"""The hourly sending counter of the submission service (`send_counters`).

Windows are fixed UTC clock hours of the database server (`date_trunc(..., now(), 'UTC')`),
so every submission process and host counts in the same window whatever its own clock says.
A recipient is reserved before it is relayed and released again when the relay fails, so only
mail the upstream accepted uses quota.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from encimap.store.types import Executor

WINDOW = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Quota:
    """The outcome of a reservation: granted or not, and the window it counted in."""

    granted: bool
    window_start: datetime.datetime
    count: int | None  # recipients counted in the window after a granted reservation

    @property
    def resets_at(self) -> datetime.datetime:
        return self.window_start + WINDOW


# One statement, so concurrent reservations from any host serialise on the row: the row is
# created, moved to the current window (count restarts at 0) or incremented, but only while
# the new count stays within the limit. No row back means the limit is reached.
_RESERVE = """
WITH bucket AS (SELECT date_trunc('hour', now(), 'UTC') AS start),
reserved AS (
    INSERT INTO send_counters AS c (principal_key, window_start, count)
    SELECT $1::text, bucket.start, $2::int FROM bucket WHERE $2::int <= $3::int
    ON CONFLICT (principal_key) DO UPDATE
       SET count = CASE WHEN c.window_start = EXCLUDED.window_start THEN c.count ELSE 0 END
                   + EXCLUDED.count,
           window_start = EXCLUDED.window_start,
           updated_at = now()
     WHERE CASE WHEN c.window_start = EXCLUDED.window_start THEN c.count ELSE 0 END
           + EXCLUDED.count <= $3::int
    RETURNING count
)
SELECT (SELECT count FROM reserved) AS count, bucket.start AS window_start FROM bucket
"""

_RELEASE = """
UPDATE send_counters SET count = greatest(count - $3, 0), updated_at = now()
 WHERE principal_key = $1 AND window_start = $2
"""


async def reserve(db: Executor, principal_key: str, count: int, limit: int) -> Quota:
    """Count `count` recipients for `principal_key` if that keeps it within `limit`."""
    row = await db.fetchrow(_RESERVE, principal_key, count, limit)
    return Quota(row["count"] is not None, row["window_start"], row["count"])


async def release(
    db: Executor, principal_key: str, window_start: datetime.datetime, count: int
) -> None:
    """Give back reserved recipients that were not sent (a no-op once the window moved on)."""
    await db.execute(_RELEASE, principal_key, window_start, count)


async def sent_in_window(db: Executor, principal_key: str) -> int:
    """Recipients counted for `principal_key` in the current window (0 without a row)."""
    return await db.fetchval(
        """SELECT coalesce(sum(count), 0)::int FROM send_counters
            WHERE principal_key = $1 AND window_start = date_trunc('hour', now(), 'UTC')""",
        principal_key,
    )
