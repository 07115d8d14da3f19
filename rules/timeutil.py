"""Event-time helpers. All times are integer epoch milliseconds (UTC)."""
from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache

SECOND = 1000
DAY = 86_400_000


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_ts(value: str) -> int:
    """Parse an ISO-8601 timestamp to epoch ms (sub-millisecond parts rounded half away
    from zero). A timezone is required."""
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 timestamp string, got {type(value).__name__}")
    shown = repr(value[:40]) + ("..." if len(value) > 40 else "")     # an error never repeats a long value
    try:
        dt = datetime.fromisoformat(value)      # 3.11+: accepts a trailing Z
    except ValueError:
        raise ValueError(f"expected an ISO-8601 timestamp like 2026-04-01T09:00:00Z, got {shown}") from None
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {shown} has no timezone; add Z or an offset")
    delta = dt - _EPOCH
    us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds   # exact
    return (us + 500) // 1000 if us >= 0 else -((500 - us) // 1000)


def format_ts(ms: int) -> str:
    """Canonical UTC text: seconds precision, milliseconds only when non-zero."""
    day, rest = divmod(ms, DAY)
    seconds, milli = divmod(rest, 1000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if milli:
        return f"{_date_text(day)}T{hours:02d}:{minutes:02d}:{seconds:02d}.{milli:03d}Z"
    return f"{_date_text(day)}T{hours:02d}:{minutes:02d}:{seconds:02d}Z"


@lru_cache(maxsize=4096)
def _date_text(day: int) -> str:
    return to_dt(day * DAY).strftime("%Y-%m-%d")


def to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def from_dt(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1000))


@lru_cache(maxsize=4096)
def month_of_day(day: int) -> str:
    """The calendar month (UTC) of an epoch day, as YYYY-MM."""
    return to_dt(day * DAY).strftime("%Y-%m")


def month_key(ms: int) -> str:
    """The billing period of an event: its calendar month (UTC)."""
    return month_of_day(ms // DAY)


def month_start(year: int, month: int) -> int:
    """Epoch ms of 00:00 UTC on the 1st of (year, month); month may overflow."""
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return from_dt(datetime(year, month, 1, tzinfo=timezone.utc))
