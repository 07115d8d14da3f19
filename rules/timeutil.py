"""Event-time helpers. All times are integer epoch milliseconds (UTC)."""
from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache

SECOND = 1000
DAY = 86_400_000


def parse_ts(value: str) -> int:
    """Parse an ISO-8601 timestamp to epoch ms. A timezone is required."""
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 timestamp string, got {value!r}")
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected an ISO-8601 timestamp like 2026-04-01T09:00:00Z, got {value!r}") from None
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no timezone; add Z or an offset")
    return int(dt.timestamp() * 1000 + (0.5 if dt.timestamp() >= 0 else -0.5))


def format_ts(ms: int) -> str:
    """Canonical UTC text: seconds precision, milliseconds only when non-zero."""
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    if ms % 1000:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def from_dt(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1000))


@lru_cache(maxsize=4096)
def _month_of_day(day: int) -> str:
    return to_dt(day * DAY).strftime("%Y-%m")


def month_key(ms: int) -> str:
    """The billing period of an event: its calendar month (UTC)."""
    return _month_of_day(ms // DAY)


def month_start(year: int, month: int) -> int:
    """Epoch ms of 00:00 UTC on the 1st of (year, month); month may overflow."""
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return from_dt(datetime(year, month, 1, tzinfo=timezone.utc))
