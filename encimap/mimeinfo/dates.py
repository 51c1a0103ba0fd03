"""The Date field as a datetime (for SENTBEFORE/SENTON/SENTSINCE)."""

from __future__ import annotations

import functools
import re
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Fast path: the RFC 5322 form almost every Date field has, read without the stdlib's
# general tokenizing; anything else goes to parsedate_to_datetime.
_PLAIN_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?([0-9]{1,2}) "
    rf"({'|'.join(_MONTHS)}) ([1-9][0-9]{{3}}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-][0-9]{4})"
).fullmatch


def parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    plain = _PLAIN_DATE(value)
    try:
        return parsedate_to_datetime(value) if plain is None else _plain_date(plain)
    except (TypeError, ValueError, IndexError):
        return None


def _plain_date(match: re.Match[str]) -> datetime:
    """What parsedate_to_datetime gives for a _PLAIN_DATE match."""
    day, month, year, hour, minute, second, zone = match.groups()
    return datetime(
        int(year),
        _MONTHS.index(month) + 1,
        int(day),
        int(hour),
        int(minute),
        int(second),
        tzinfo=_zone(zone),
    )


@functools.lru_cache(maxsize=64)
def _zone(numeric: str) -> timezone | None:
    """`+hhmm` / `-hhmm` as a fixed zone; -0000 says the zone is unknown (RFC 5322 3.3)."""
    if numeric == "-0000":
        return None
    seconds = int(numeric[1:3]) * 3600 + int(numeric[3:5]) * 60
    return timezone(timedelta(seconds=-seconds if numeric[0] == "-" else seconds))
