"""The benchmark's load generator (`bench/run.py`, `pace`) against the real broker: it builds its
own record batches, so it must put every record where Kafka's default partitioner would (the
worker's co-partitioning by customer_id depends on it), keep the rounds' renamed customers
consistent between key and value, and stamp each record no earlier than the round it is sent in.
"""
from __future__ import annotations

import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench import run as B
from rules.engine import INPUT_TOPICS
from streams.generate import generate
from streams.kafka import ensure_topics
from streams.partitioning import partition_for
from streams.recorded import load_sorted

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("rounds, seconds", [(2.5, 1.2), (100, 0.05)], ids=["paced", "overflowing-batches"])
async def test_pace_partitions_renames_and_stamps_like_a_per_record_producer(broker, rounds, seconds):
    """`overflowing-batches`: one round of about 20,000 records, so a partition's record batch
    fills up (16 kB) and is sent before the round ends, many times over."""
    lines = b"".join(generate(customers=20, days=10, seed=3, start="2025-03-01")).splitlines()
    events, _ = load_sorted(lines)
    events = [e for e in events if e.topic in INPUT_TOPICS]
    prefix = f"it-pace-{time.monotonic_ns()}."
    topics = [prefix + t for t in INPUT_TOPICS]
    await ensure_topics(broker.bootstrap, topics, B.PARTITIONS)
    rate = len(events) * rounds / seconds
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    await producer.start()
    try:
        before = int(time.time() * 1000)
        n, start_ms = await B.pace(producer, prefix, events, rate, seconds, 0.02)
        after = int(time.time() * 1000)
    finally:
        await producer.stop()
    assert n > 2 * len(events)

    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got = []
    try:
        while len(got) < n:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, f"{len(got)} of {n} records arrived"
            got.extend(m for msgs in batch.values() for m in msgs)
    finally:
        await consumer.stop()

    assert len(got) == n
    assert before <= start_ms <= after
    rounds = {}
    for m in got:
        assert start_ms - 1 <= m.timestamp <= after
        if m.key is None:
            continue
        key = m.key.decode()
        assert m.partition == partition_for(key, B.PARTITIONS), key
        base, _, k = key.partition("~")
        rounds[k] = rounds.get(k, 0) + 1
        doc = orjson.loads(m.value)
        if k:       # a later round: the customer renamed in the value too
            assert key in m.value.decode() and f'"{base}"' not in m.value.decode(), doc
    assert set(rounds) >= {"", "1", "2"}
    # every record of the first round, exactly once, in its topic
    sent = sorted((prefix + e.topic, e.raw) for e in events)
    first = sorted((m.topic, m.value) for m in got if m.key is None or b"~" not in m.key)
    assert first == sent


async def test_empty_outputs_leaves_a_new_readers_output_topics_empty_and_the_inputs_as_they_were(broker):
    """Each backlog run of the benchmark starts on empty output topics: a new worker's read model
    reads them from the start, and would otherwise also read what an earlier run wrote."""
    prefix = f"it-empty-{time.monotonic_ns()}."
    await ensure_topics(broker.bootstrap, [prefix + "usage"], B.PARTITIONS)
    await B.empty_outputs(broker.bootstrap, prefix)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        for topic in (*B.WRITTEN, "usage"):
            for p in range(B.PARTITIONS):
                await producer.send_and_wait(prefix + topic, b"earlier run", partition=p)
        await B.empty_outputs(broker.bootstrap, prefix)
        await producer.send_and_wait(prefix + "proposals", b"this run", partition=3)
    finally:
        await producer.stop()

    async def read(topics: list[str]) -> list[bytes]:
        consumer = AIOKafkaConsumer(*topics, bootstrap_servers=broker.bootstrap, group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            parts = [tp for t in topics for tp in consumer.assignment() if tp.topic == t]
            ends = await consumer.end_offsets(parts)
            want, got, deadline = sum(ends.values()), [], time.monotonic() + 60
            while len(got) < want and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    got += [r.value for r in records]
            return got
        finally:
            await consumer.stop()

    assert await read([prefix + t for t in B.WRITTEN]) == [b"this run"]
    assert await read([prefix + "usage"]) == [b"earlier run"] * B.PARTITIONS
