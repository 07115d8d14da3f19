"""Real parts: the embedded tansu broker, a real redis-server and worker processes."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.embedded import EmbeddedBroker, EmbeddedRedis, WorkerProcess, free_port

PARTITIONS = 4


@pytest.fixture(scope="session")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def broker(logs):
    with EmbeddedBroker(log=logs / "broker.log") as b:
        yield b


@pytest.fixture(scope="session")
def redis_server(logs):
    with EmbeddedRedis(log=logs / "redis.log") as r:
        yield r


class Worker(WorkerProcess):
    def __init__(self, name: str, env: dict, logs: Path):
        self.name = name
        super().__init__(env, logs / f"{name}.log", level="info")

    def wait_events_in(self, n: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.events_in() < n:
            assert self.proc.poll() is None and time.monotonic() < deadline, \
                f"{self.name}: {self.events_in()} of {n} events read: {self.tail()}"
            time.sleep(0.1)     # another process's progress: polled


@pytest.fixture
def start_worker(broker, redis_server, logs, request):
    """Start workers of one fresh app (own topics prefix and group) on the shared broker."""
    workers = []
    # the name is cut short, so a digest of the whole test id keeps parametrized tests apart
    digest = hashlib.blake2b(request.node.nodeid.encode(), digest_size=3).hexdigest()
    app_id = f"it-{request.node.name[:30].replace('[', '-').replace(']', '')}-{digest}-{os.getpid()}"
    prefix = app_id + "."

    def start(name: str = "w1", **extra) -> Worker:
        env = {"UPSELL_BROKER": broker.url, "UPSELL_REDIS_URL": redis_server.url, "UPSELL_CLOCK": "event",
               "UPSELL_PARTITIONS": str(PARTITIONS), "UPSELL_WEB_PORT": str(free_port()),
               "UPSELL_SESSION_TIMEOUT": "6", "UPSELL_APP_ID": app_id, "UPSELL_TOPIC_PREFIX": prefix,
               "UPSELL_DATA_DIR": str(logs / f"{app_id}-{name}"), **extra}
        w = Worker(f"{app_id}-{name}", env, logs)
        workers.append(w)
        return w

    start.prefix = prefix
    yield start
    for w in workers:
        w.stop()
    for w in workers:      # every consumer and producer closed, also when stopped while starting
        assert "Unclosed AIOKafka" not in w.log.read_text(errors="replace"), w.name


async def consume(bootstrap: str, topic: str, count: int, timeout: float = 90, until=None) -> list:
    """Read `count` records (and until `until(records)` holds) from the start of `topic`,
    or fail after `timeout` seconds."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    got = []
    try:
        deadline = time.monotonic() + timeout
        while (len(got) < count or (until is not None and not until(got))) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                got.extend(msgs)
    finally:
        await consumer.stop()
    assert len(got) >= count, f"{topic}: {len(got)} of {count} records within {timeout} s"
    return got


async def produce(bootstrap: str, records) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, key, value, ts in records:
            await producer.send(topic, value=value, key=key, timestamp_ms=ts)
        await producer.flush()
    finally:
        await producer.stop()


def loads(msgs) -> list[dict]:
    return [orjson.loads(m.value) for m in msgs]
