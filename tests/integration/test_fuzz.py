"""Fuzzing on the real broker: a seeded stream of hostile records mixed into a valid one. The
worker stays alive, every hostile record is a dead letter, and the valid stream's proposals are
the backtest's."""
from __future__ import annotations

import asyncio
import random

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from rules.config import load_rules
from rules.timeutil import parse_ts
from streams.backtest import backtest_lines, last_event_time
from streams.deadletters import DEFAULT_MAX_BYTES
from streams.generate import generate
from streams.recorded import load_sorted
from streams.replay import replay
from tests.fuzz import hostile
from tests.integration.conftest import PARTITIONS, consume, loads
from tests.integration.test_end_to_end import _differences, _end_markers

pytestmark = pytest.mark.integration
HOSTILE = 1500
FAR = parse_ts("2099-01-01T00:00:00Z")


async def test_hostile_records_are_dead_letters_and_the_valid_stream_is_decided_as_the_backtest(broker, start_worker):
    rng = random.Random(20261205)
    lines = b"".join(generate(customers=50, days=45, seed=9, start="2025-01-01", bad_rate=0)).splitlines()
    evs, _ = load_sorted(lines)
    expected = backtest_lines(lines, load_rules(), PARTITIONS)
    cids = sorted({e.key for e in evs})
    sends = [(e.topic, e.key.encode(), e.raw, e.ts) for e in evs]
    # valid usage samples dated 2099, each just before a sample of the same customer: that sample
    # shows it far ahead, and it is dropped, never holding back its topic-partition
    usage = [i for i, s in enumerate(sends) if s[0] == "usage"]
    far = sorted(rng.sample(usage[: len(usage) // 2], 5), reverse=True)
    for i in far:
        sends.insert(i, ("usage", sends[i][1], orjson.dumps(
            {"customer_id": sends[i][1].decode(), "metric": "seats", "value": 1}), FAR))
    bad = [hostile(rng, cids, evs[0].ts, evs[-1].ts) for _ in range(HOSTILE)]
    for _, topic, key, value, ts in bad:
        sends.insert(rng.randrange(len(sends) + 1), (topic, key, value, ts))
    prefix = start_worker.prefix
    await replay([], broker.bootstrap, PARTITIONS, prefix=prefix, progress=False)     # the topics
    worker = start_worker("w1")
    await asyncio.to_thread(worker.wait_healthy)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=1 << 20)
    await producer.start()
    try:
        for topic, key, value, ts in sends:
            await producer.send(prefix + topic, value=value, key=key, timestamp_ms=ts)
        await producer.flush()
    finally:
        await producer.stop()
    await _end_markers(broker, prefix, last_event_time(evs))
    want = {p["proposal_id"]: p for p in expected.proposals}
    got = await consume(broker.bootstrap, prefix + "proposals", len(want), timeout=180,
                        until=lambda msgs: {orjson.loads(m.value)["proposal_id"] for m in msgs} >= set(want))
    by_id = {p["proposal_id"]: p for p in loads(got)}
    assert by_id == want, _differences(by_id, want)
    letters = loads(await consume(broker.bootstrap, prefix + "dead-letters", HOSTILE + len(far), timeout=180))
    assert len({(d["topic"], d["partition"], d["offset"]) for d in letters}) == HOSTILE + len(far)
    assert all(d["error"] and len(orjson.dumps(d)) < DEFAULT_MAX_BYTES + 4096 for d in letters)
    assert sum("UPSELL_MAX_AHEAD_MS" in d["error"] for d in letters) == len(far)
    assert worker.proc.poll() is None
    assert (await asyncio.to_thread(worker.get, "/health"))[0] == 200
