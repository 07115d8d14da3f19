"""An input log whose offsets went backwards (a topic deleted and re-created while the worker was
down) is seen: an ERROR line, a metric, `/health`, and UPSELL_OFFSETS_BACKWARDS's choice."""
from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from rules.engine import INPUT_TOPICS
from rules.timeutil import parse_ts
from streams.embedded import metric_sum
from streams.kafka import ensure_topics
from streams.replay import send_markers
from tests.integration.conftest import PARTITIONS, consume, loads, produce

pytestmark = pytest.mark.integration
T0 = parse_ts("2025-06-10T09:00:00Z")


def _usage(value: int) -> bytes:
    return orjson.dumps({"customer_id": "c-1", "metric": "seats", "value": value})


async def _markers(bootstrap: str, prefix: str, ts: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await send_markers(producer, prefix, PARTITIONS, ts)
    finally:
        await producer.stop()


def _wait_applied(worker, timeout: float = 90) -> None:
    """Until the worker holds no event waiting for stream time: all applied (and written)."""
    deadline = time.monotonic() + timeout
    while metric_sum(worker.get("/metrics")[1].decode(), "upsell_events_waiting") > 0:
        assert time.monotonic() < deadline and worker.proc.poll() is None, worker.tail()
        time.sleep(0.1)     # another process's progress: polled


async def _first_life(broker, start_worker, **env):
    """A worker applies a customer and three usage samples (offsets 0-2 of its usage partition),
    then stops; the usage topic is deleted and created again, empty."""
    prefix = start_worker.prefix
    w1 = start_worker("w1", **env)
    await asyncio.to_thread(w1.wait_healthy)
    await produce(broker.bootstrap, [
        (prefix + "customers", b"c-1", orjson.dumps({"customer_id": "c-1", "segment": "b2b", "plan": "basic",
                                                     "signup_at": "2024-01-01T00:00:00Z"}), T0),
        *[(prefix + "usage", b"c-1", _usage(10 + i), T0 + 1000 * (i + 1)) for i in range(3)]])
    await _markers(broker.bootstrap, prefix, T0 + 10_000)
    await asyncio.to_thread(w1.wait_events_in, 4)
    await asyncio.to_thread(_wait_applied, w1)
    await asyncio.to_thread(w1.stop)
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([prefix + "usage"])
    finally:
        await admin.close()
    await ensure_topics(broker.bootstrap, [prefix + t for t in INPUT_TOPICS], PARTITIONS)
    # the new log: one sample at 92% of the seats, at offset 0, below the applied offset 2
    await produce(broker.bootstrap, [(prefix + "usage", b"c-1", _usage(46), T0 + 60_000)])
    await _markers(broker.bootstrap, prefix, T0 + 120_000)


async def test_reapply_applies_the_new_log_and_reports_it(broker, start_worker):
    await _first_life(broker, start_worker, UPSELL_OFFSETS_BACKWARDS="reapply")
    w2 = start_worker("w2", UPSELL_OFFSETS_BACKWARDS="reapply")
    await asyncio.to_thread(w2.wait_healthy, 90, "/live")
    got = loads(await consume(broker.bootstrap, start_worker.prefix + "proposals", 1))
    assert got[0]["customer_id"] == "c-1" and got[0]["trigger"] == "usage_limit"
    status, body = await asyncio.to_thread(w2.get, "/health")
    report = orjson.loads(body)
    assert status == 200 and report["status"] == "degraded" and report["warnings"]
    [reg] = report["offset_regressions"]
    assert reg["topic"] == "usage" and reg["applied_offset"] == 2 and reg["log_end_offset"] == 2   # the sample and a watermark record
    assert metric_sum(w2.get("/metrics")[1].decode(), "upsell_offset_regressions_total") == 1
    assert "the log ends at offset 2, but this partition's state has applied offset 2" in w2.log.read_text()


async def test_stop_stops_the_worker_with_one_line(broker, start_worker):
    await _first_life(broker, start_worker)
    w2 = start_worker("w2")

    def stopped() -> int:
        return w2.proc.wait(timeout=120)
    assert await asyncio.to_thread(stopped) != 0
    text = w2.log.read_text()
    assert "UPSELL_OFFSETS_BACKWARDS=stop" in text and "applied offset 2" in text
