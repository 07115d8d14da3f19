"""A stream produced with librdkafka's default partitioner (confluent-kafka's `consistent_random`,
CRC32, not Kafka's murmur2), with a worker restart in the middle: records on a partition their key
does not hash to are forwarded through the repartition topic, and the proposals are the
backtest's for the same recording with each record's partition."""
from __future__ import annotations

import asyncio

import orjson
import pytest

from rules.config import load_rules
from streams.backtest import backtest_lines, last_event_time
from streams.embedded import metric_sum
from streams.generate import generate
from streams.partitioning import partition_for
from streams.recorded import load_sorted
from streams.replay import replay
from tests.integration.conftest import PARTITIONS, consume, loads
from tests.integration.test_end_to_end import _differences, _end_markers

pytestmark = pytest.mark.integration
confluent_kafka = pytest.importorskip("confluent_kafka")


def _produce(bootstrap: str, prefix: str, events) -> list[int]:
    """Each event with confluent-kafka's defaults; returns the partition each landed on."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    landed: list[int | None] = [None] * len(events)
    errors = []

    def delivered(i):
        def report(err, msg):
            if err is not None:
                errors.append(err)
            else:
                landed[i] = msg.partition()
        return report

    for i, e in enumerate(events):
        producer.produce(prefix + e.topic, value=e.raw, key=e.key.encode() if e.key is not None else None,
                         timestamp=e.ts, on_delivery=delivered(i))
        producer.poll(0)
    assert producer.flush(60) == 0 and not errors, errors
    return landed


async def test_librdkafka_default_partitioner_with_a_restart_matches_the_backtest(broker, start_worker):
    lines = b"".join(generate(customers=60, days=60, seed=41, start="2025-01-01", bad_rate=0)).splitlines()
    evs, _ = load_sorted(lines)
    prefix = start_worker.prefix
    await replay([], broker.bootstrap, PARTITIONS, prefix=prefix, progress=False)     # the topics
    w1 = start_worker("w1")
    await asyncio.to_thread(w1.wait_healthy)
    half = len(evs) // 2
    landed = await asyncio.to_thread(_produce, broker.bootstrap, prefix, evs[:half])
    await asyncio.to_thread(w1.wait_events_in, half)
    forwarded_1 = metric_sum((await asyncio.to_thread(w1.get, "/metrics"))[1].decode(), "upsell_wrong_partition_total")
    await asyncio.to_thread(w1.stop)                  # a plain restart: SIGTERM, then start again
    assert w1.proc.returncode == 0, w1.tail()
    assert "partitioner=murmur2_random" in w1.log.read_text()
    w2 = start_worker("w2")
    await asyncio.to_thread(w2.wait_healthy)
    landed += await asyncio.to_thread(_produce, broker.bootstrap, prefix, evs[half:])
    await _end_markers(broker, prefix, last_event_time(evs))
    # the recording as produced: each record with its partition
    recorded = [orjson.dumps({**orjson.loads(lines[e.line - 1]), "partition": p}) for e, p in zip(evs, landed)]
    misplaced = sum(p != partition_for(e.key, PARTITIONS) for e, p in zip(evs, landed))
    assert misplaced > len(evs) // 4          # most records: CRC32 and murmur2 rarely agree
    expected = backtest_lines(recorded, load_rules(), PARTITIONS)
    want = {p["proposal_id"]: p for p in expected.proposals}
    assert len(want) > 20 and not expected.dead_letters
    got = await consume(broker.bootstrap, prefix + "proposals", len(want), timeout=120,
                        until=lambda msgs: {orjson.loads(m.value)["proposal_id"] for m in msgs} >= set(want))
    by_id = {}
    for p in loads(got):
        assert by_id.setdefault(p["proposal_id"], p) == p, ("a redelivery changed a proposal", p)
    assert by_id == want, _differences(by_id, want)
    forwarded_2 = metric_sum((await asyncio.to_thread(w2.get, "/metrics"))[1].decode(), "upsell_wrong_partition_total")
    assert forwarded_1 + forwarded_2 >= misplaced      # records read again after the restart count again
