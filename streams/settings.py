"""Every setting of the worker, read from the environment (documented in README.md)."""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

EVENT_LOOPS = ("uvloop", "aio")


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value in (None, "") else value


def _positive_int(name: str, default: str, unit: str = "milliseconds") -> int:
    value = _env(name, default)
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name} must be a whole number of {unit} >= 1, got {value!r}")
    return n


def _seconds(name: str, default: str) -> float:
    """A number of seconds >= 0 (0 where the setting says what it means)."""
    value = _env(name, default)
    try:
        n = float(value)
    except ValueError:
        n = -1.0
    if not n >= 0 or n == float("inf"):
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return n


def _flag(name: str, default: str) -> bool:
    value = _env(name, default)
    if value not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


@dataclass(frozen=True)
class Settings:
    app_id: str
    broker: str
    redis_url: str
    partitions: int
    store: str
    rules: str | None
    clock: str              # wall: a wall-clock ticker advances stream time; event: events alone
    lateness_ms: int
    tick_interval: float
    clock_resolution_ms: int
    commit_interval: float
    web_port: int
    web_host: str
    topic_prefix: str
    data_dir: str
    session_timeout: float
    fetch_max_wait_ms: int
    max_unsent_mb: int      # MiB of state writes and decisions not yet in the broker before a batch end waits
    event_loop: str         # uvloop or aio (asyncio's own): see use_event_loop
    consumer_thread: bool   # the Kafka consumer in a thread of its own (Faust's way), not on the app's loop
    full_gc_interval: float  # seconds between full garbage collections; 0: Python's own (transport fix 11)

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between a consumer's heartbeats: a third of the session timeout, at most 3
        (Faust's and the read model's consumers alike)."""
        return min(3.0, self.session_timeout / 3)

    @classmethod
    def from_env(cls) -> "Settings":
        clock = _env("UPSELL_CLOCK", "wall")
        if clock not in ("wall", "event"):
            raise ValueError(f"UPSELL_CLOCK must be 'wall' or 'event', got {clock!r}")
        event_loop = _env("UPSELL_EVENT_LOOP", "uvloop")
        if event_loop not in EVENT_LOOPS:
            raise ValueError(f"UPSELL_EVENT_LOOP must be {' or '.join(map(repr, EVENT_LOOPS))}, got {event_loop!r}")
        return cls(
            app_id=_env("UPSELL_APP_ID", "upsell-engine"),
            broker=_env("UPSELL_BROKER", "kafka://localhost:9092"),
            redis_url=_env("UPSELL_REDIS_URL", "redis://localhost:6379/0"),
            partitions=int(_env("UPSELL_PARTITIONS", "8")),
            store=_env("UPSELL_STORE", "memory://"),
            rules=os.environ.get("UPSELL_RULES") or None,
            clock=clock,
            lateness_ms=int(_env("UPSELL_LATENESS_MS", "2000")),
            tick_interval=float(_env("UPSELL_TICK_INTERVAL", "1.0")),
            clock_resolution_ms=_positive_int("UPSELL_CLOCK_RESOLUTION_MS", "5"),
            commit_interval=float(_env("UPSELL_COMMIT_INTERVAL", "1.0")),
            web_port=int(_env("UPSELL_WEB_PORT", "6066")),
            web_host=_env("UPSELL_WEB_HOST", "127.0.0.1"),
            topic_prefix=_env("UPSELL_TOPIC_PREFIX", ""),
            data_dir=_env("UPSELL_DATA_DIR", "upsell-data"),
            session_timeout=float(_env("UPSELL_SESSION_TIMEOUT", "10")),
            fetch_max_wait_ms=int(_env("UPSELL_FETCH_MAX_WAIT_MS", "100")),
            max_unsent_mb=_positive_int("UPSELL_MAX_UNSENT_MB", "16", "MiB"),
            event_loop=event_loop,
            consumer_thread=_flag("UPSELL_CONSUMER_THREAD", "0"),
            full_gc_interval=_seconds("UPSELL_FULL_GC_INTERVAL", "60"),
        )


def use_event_loop(name: str) -> None:
    """Makes every event loop created from now on (the worker's, and with UPSELL_CONSUMER_THREAD=1
    its consumer thread's) a `name` loop: "uvloop" (libuv's, the default: the live worker used
    about 7% less CPU per event, bench/README.md item 43) or "aio" (asyncio's own). Call it before
    the worker makes its loop: `upsell worker` and the benchmark's no-op app do; `faust -A
    streams.app worker` takes `-L`."""
    if name == "uvloop":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif name == "aio":
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    else:
        raise ValueError(f"unknown event loop {name!r}: one of {', '.join(EVENT_LOOPS)}")


def event_loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """What `loop` is, in the setting's terms: "uvloop" or "aio"."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "aio"
