"""Every setting of the worker, read from the environment once, at start, and validated there:
a wrong value stops the process with one line naming the variable, the value and what is
expected (`SettingsError`). The settings are documented in README.md and docs/production.md."""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

EVENT_LOOPS = ("uvloop", "aio")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
WRONG_PARTITION = ("repartition", "dead-letter")


class SettingsError(ValueError):
    """A setting with a value that cannot be used; the text names the variable."""


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value in (None, "") else value


def _int(name: str, default: str, unit: str, least: int, most: int | None = None) -> int:
    value = _env(name, default)
    try:
        n = int(value)
    except ValueError:
        n = least - 1
    if n < least or (most is not None and n > most):
        within = f">= {least}" if most is None else f"from {least} to {most}"
        raise SettingsError(f"{name} must be a whole number of {unit} {within}, got {value!r}")
    return n


def _positive_int(name: str, default: str, unit: str = "milliseconds") -> int:
    return _int(name, default, unit, 1)


def _choice(name: str, default: str, choices: tuple) -> str:
    value = _env(name, default)
    if value not in choices:
        raise SettingsError(f"{name} must be {' or '.join(map(repr, choices))}, got {value!r}")
    return value


def _url(name: str, default: str, schemes: tuple[str, ...]) -> str:
    """A URL (or `;`-separated list, for brokers) whose every part has one of `schemes`, a host
    and, if given, a numeric port."""
    value = _env(name, default)
    for part in value.split(";"):
        try:
            u = urlsplit(part.strip())
            ok = u.scheme in schemes and (u.hostname or u.scheme == "unix" and u.path) and (u.port or True)
        except ValueError:          # a port that is not a number
            ok = False
        if not ok:
            raise SettingsError(f"{name} must be a URL like {schemes[0]}://host:port, got {_redact(value)!r}")
    return value


def _redact(url: str) -> str:
    """A URL with any password replaced by ***, for logs and messages."""
    try:
        u = urlsplit(url)
    except ValueError:
        return "<unparseable>"
    if u.password is None:
        return url
    netloc = u.netloc.replace(":" + u.password + "@", ":***@", 1)
    return u._replace(netloc=netloc).geturl()


def _file(name: str) -> str | None:
    value = os.environ.get(name) or None
    if value is not None and not os.path.isfile(value):
        raise SettingsError(f"{name} must name a readable file, got {value!r} (no such file)")
    return value


def _seconds(name: str, default: str, least: float = 0.0) -> float:
    """A number of seconds >= `least` (0 where the setting says what it means)."""
    value = _env(name, default)
    try:
        n = float(value)
    except ValueError:
        n = -1.0
    if not n >= least or n == float("inf") or (least > 0 and n == 0):
        raise SettingsError(f"{name} must be a number of seconds {'>=' if not least else '>'} "
                            f"{least:g}, got {value!r}")
    return n


def _flag(name: str, default: str) -> bool:
    value = _env(name, default)
    if value not in ("0", "1"):
        raise SettingsError(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def env_partitions() -> int:
    """UPSELL_PARTITIONS alone (the offline commands' default partition count)."""
    return _int("UPSELL_PARTITIONS", "8", "partitions", 1, 10_000)


def env_wrong_partition() -> str:
    """UPSELL_WRONG_PARTITION alone (the backtest treats such records as the worker does)."""
    return _choice("UPSELL_WRONG_PARTITION", "repartition", WRONG_PARTITION)


def env_max_ahead() -> int:
    """UPSELL_MAX_AHEAD_MS alone (the backtest drops far-ahead events as the worker does)."""
    return _int("UPSELL_MAX_AHEAD_MS", str(86_400_000), "milliseconds", 1000)


@dataclass(frozen=True)
class KafkaSecurity:
    """How every Kafka client of the project connects: worker, read model, replay, tail, demo.
    The password is never part of the text of this object (`repr`)."""
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    @classmethod
    def from_env(cls) -> "KafkaSecurity":
        protocol = _choice("UPSELL_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", SECURITY_PROTOCOLS)
        sasl = protocol.startswith("SASL")
        mechanism = _choice("UPSELL_KAFKA_SASL_MECHANISM", "PLAIN", SASL_MECHANISMS) if sasl else None
        username = os.environ.get("UPSELL_KAFKA_SASL_USERNAME") or None
        password = os.environ.get("UPSELL_KAFKA_SASL_PASSWORD") or None
        if sasl and (username is None or password is None):
            raise SettingsError(f"UPSELL_KAFKA_SECURITY_PROTOCOL={protocol} needs UPSELL_KAFKA_SASL_USERNAME "
                                "and UPSELL_KAFKA_SASL_PASSWORD")
        cert, key = _file("UPSELL_KAFKA_SSL_CERTFILE"), _file("UPSELL_KAFKA_SSL_KEYFILE")
        if (cert is None) != (key is None):
            raise SettingsError("UPSELL_KAFKA_SSL_CERTFILE and UPSELL_KAFKA_SSL_KEYFILE go together "
                                "(a client certificate and its key)")
        return cls(protocol, mechanism, username, password, _file("UPSELL_KAFKA_SSL_CAFILE"), cert, key)

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self):
        """The TLS context for SSL and SASL_SSL (system CAs unless a CA file is set), else None."""
        if not self.tls:
            return None
        from aiokafka.helpers import create_ssl_context
        return create_ssl_context(cafile=self.cafile, certfile=self.certfile, keyfile=self.keyfile)

    def client_kwargs(self) -> dict:
        """Keyword arguments for an aiokafka producer, consumer or admin client."""
        kw: dict = {"security_protocol": self.protocol}
        if self.tls:
            kw["ssl_context"] = self.ssl_context()
        if self.sasl_mechanism:
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                      sasl_plain_password=self.password)
        return kw

    def faust_credentials(self):
        """The same, as Faust's `broker_credentials` (None for PLAINTEXT)."""
        import faust
        if self.protocol == "PLAINTEXT":
            return None
        if self.protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context())
        return faust.SASLCredentials(username=self.username, password=self.password,
                                     ssl_context=self.ssl_context(), mechanism=self.sasl_mechanism)


@dataclass(frozen=True)
class Settings:
    app_id: str
    broker: str
    redis_url: str = field(repr=False)   # may hold a password: see redis_url_redacted
    partitions: int
    store: str
    rules: str | None
    clock: str              # wall: the local clock moves stream time with the wall clock; event: events alone
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
    full_gc_interval: float  # seconds between full garbage collections; 0: Python's own
    dead_letter_max_bytes: int   # the most of a rejected record's payload a dead letter keeps
    max_ahead_ms: int        # how far ahead an event time may be: of a later record on its
    #                          topic-partition (ingest), of the clock (the read model's created_at)
    wrong_partition: str     # a record not on its key's murmur2 partition: repartition | dead-letter
    offsets_backwards: str   # stop | reapply: an input log found below the offsets applied
    replication_factor: int  # of the topics a worker creates (missing ones at start, the changelog)
    http_token: str | None = field(repr=False)   # the bearer token the HTTP API asks for (required off loopback)
    web_internal: bool       # Faust's own pages (/router/, /table/, ...) served
    kafka: KafkaSecurity = field(default_factory=KafkaSecurity)

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between a consumer's heartbeats: a third of the session timeout, at most 3
        (Faust's and the read model's consumers alike)."""
        return min(3.0, self.session_timeout / 3)

    @property
    def redis_url_redacted(self) -> str:
        return _redact(self.redis_url)

    @property
    def web_loopback(self) -> bool:
        return self.web_host in ("127.0.0.1", "localhost", "::1") or self.web_host.startswith("127.")

    @classmethod
    def from_env(cls) -> "Settings":
        from streams.deadletters import DEFAULT_MAX_BYTES, MAX_BYTES_RANGE
        web_host = _env("UPSELL_WEB_HOST", "127.0.0.1")
        token = os.environ.get("UPSELL_HTTP_TOKEN") or None
        s = cls(
            app_id=_env("UPSELL_APP_ID", "upsell-engine"),
            broker=_url("UPSELL_BROKER", "kafka://localhost:9092", ("kafka", "aiokafka")),
            redis_url=_url("UPSELL_REDIS_URL", "redis://localhost:6379/0", ("redis", "rediss", "unix")),
            partitions=env_partitions(),
            store=_env("UPSELL_STORE", "memory://"),
            rules=os.environ.get("UPSELL_RULES") or None,
            clock=_choice("UPSELL_CLOCK", "wall", ("wall", "event")),
            lateness_ms=_int("UPSELL_LATENESS_MS", "2000", "milliseconds", 0),
            tick_interval=_seconds("UPSELL_TICK_INTERVAL", "1.0", least=0.001),
            clock_resolution_ms=_positive_int("UPSELL_CLOCK_RESOLUTION_MS", "5"),
            commit_interval=_seconds("UPSELL_COMMIT_INTERVAL", "1.0", least=0.001),
            web_port=_int("UPSELL_WEB_PORT", "6066", "(a TCP port)", 1, 65535),
            web_host=web_host,
            topic_prefix=_env("UPSELL_TOPIC_PREFIX", ""),
            data_dir=_env("UPSELL_DATA_DIR", "upsell-data"),
            session_timeout=_seconds("UPSELL_SESSION_TIMEOUT", "10", least=0.001),
            fetch_max_wait_ms=_int("UPSELL_FETCH_MAX_WAIT_MS", "100", "milliseconds", 0),
            max_unsent_mb=_positive_int("UPSELL_MAX_UNSENT_MB", "16", "MiB"),
            event_loop=_choice("UPSELL_EVENT_LOOP", "uvloop", EVENT_LOOPS),
            consumer_thread=_flag("UPSELL_CONSUMER_THREAD", "0"),
            full_gc_interval=_seconds("UPSELL_FULL_GC_INTERVAL", "60"),
            dead_letter_max_bytes=_int("UPSELL_DEAD_LETTER_MAX_BYTES", str(DEFAULT_MAX_BYTES), "bytes",
                                       *MAX_BYTES_RANGE),
            max_ahead_ms=env_max_ahead(),
            wrong_partition=env_wrong_partition(),
            offsets_backwards=_choice("UPSELL_OFFSETS_BACKWARDS", "stop", ("stop", "reapply")),
            replication_factor=_int("UPSELL_REPLICATION_FACTOR", "1", "replicas", 1, 16),
            http_token=token,
            web_internal=_flag("UPSELL_WEB_INTERNAL", "0"),
            kafka=KafkaSecurity.from_env(),
        )
        if s.max_ahead_ms <= s.lateness_ms:
            raise SettingsError(f"UPSELL_MAX_AHEAD_MS={s.max_ahead_ms} must be more than UPSELL_LATENESS_MS="
                                f"{s.lateness_ms}: events that late are on time, not far ahead")
        if token is None and not s.web_loopback and not _flag("UPSELL_WEB_OPEN", "0"):
            raise SettingsError(f"UPSELL_WEB_HOST={web_host} serves customer data off this machine: set "
                                "UPSELL_HTTP_TOKEN (or UPSELL_WEB_OPEN=1 to serve it without one)")
        return s


def use_event_loop(name: str) -> None:
    """Makes every event loop created from now on (the worker's, and with UPSELL_CONSUMER_THREAD=1
    its consumer thread's) a `name` loop: "uvloop" (libuv's, the default: the live worker used
    about 7% less CPU per event in the benchmark) or "aio" (asyncio's own). Call it before
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


def package_version() -> str:
    """The installed upsell-engine's version (`--version`, the start log, /metrics)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("upsell-engine")
    except PackageNotFoundError:      # a source tree that was not installed
        return "unknown (not installed)"

