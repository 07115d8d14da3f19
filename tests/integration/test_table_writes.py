"""The customer-state table's batched writes (`streams.topics.Table.write_many`) against the real
broker: what lands in the changelog, in what order, when `last_write` is done, what a failed
write does to the writes after it, and the waits on writes not yet in the broker."""
from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaTimeoutError

from streams import topics as T
from streams.app import settings
from streams.kafka import ensure_topics

pytestmark = pytest.mark.integration


@pytest.fixture
async def producer(broker):
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
def persisted() -> list:
    return []


@pytest.fixture
async def table(broker, producer, persisted, monkeypatch):
    """The worker's table, writing through a running producer; the store's persisted offsets
    recorded in `persisted` (the memory store keeps none); the keys it set removed afterwards."""
    t = T.customer_state
    await ensure_topics(broker.bootstrap, [t.changelog_topic.get_topic_name()], settings.partitions)
    monkeypatch.setattr(T.Batches, "producer", staticmethod(lambda app: producer))
    monkeypatch.setattr(t.data, "set_persisted_offset",
                        lambda tp, offset: persisted.append((tp.partition, offset)))
    before = set(t.data.keys())
    yield t
    await T.WRITES.drain(0)
    for key in set(t.data.keys()) - before:
        t.data.pop(key)
    t.last_write.clear()
    T.WRITES.last.clear()
    T.WRITES._queued.clear()


async def _read(bootstrap: str, topic: str, partition: int, last: int) -> list:
    """The partition's records from its start to offset `last`. (tansu 0.6.0's end offset is
    the last record batch's first offset + 1, so it is not asked.)"""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        out = []
        while not out or out[-1][0] < last:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            out += [(r.offset, r.key, r.value) for r in batch.get(tp, [])]
        return out
    finally:
        await consumer.stop()


def _items(p: int, write: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(b"c-%d-%d" % (p, i), b"%d:%d:%d:" % (p, write, i) + b"x" * 300) for i in range(n)]


async def test_writes_land_in_the_order_made_and_last_write_waits_for_them(broker, producer, table,
                                                                         persisted, monkeypatch):
    """Three writes per partition, each several record batches long (300-byte values, 16 KiB
    batches), the last with the partition document after its customers. The first write's
    sending is held; the second and third are made meanwhile, so they wait in line, the third
    joining the second's send. The changelog has every record in the order written, and
    `last_write` is done only once all of them are in it."""
    topic = table.changelog_topic.get_topic_name()
    parts = (1, 3)
    send_batch = producer.send_batch
    go, all_held = asyncio.Event(), asyncio.Event()
    held = []

    async def first_held(batch, topic, *, partition):
        if len(held) < len(parts):        # the first batch of each partition's first write
            held.append(partition)
            if len(held) == len(parts):
                all_held.set()
            await go.wait()
        return await send_batch(batch, topic, partition=partition)

    monkeypatch.setattr(producer, "send_batch", first_held)
    written, sends = {p: [] for p in parts}, {p: [] for p in parts}
    for write in range(3):
        for p in parts:
            items = _items(p, write, 120 if write != 1 else 7)
            if write == 2:
                items.append((b"\xffpartition:%d" % p, b'{"p": %d}' % p))
            written[p] += items
            table.write_many(p, items)
            sends[p].append(table.last_write[p])
        if write == 0:
            await asyncio.wait_for(all_held.wait(), 10)     # the first writes are on their way
    for p in parts:
        first, second, third = sends[p]
        assert second is third and second is not first     # joined while waiting in line
    assert T.WRITES.unsent_bytes == sum(len(k) + len(v) for p in parts for k, v in written[p])
    for _ in range(20):
        await asyncio.sleep(0)        # loop turns for the later writes, were they not in line
    go.set()
    await asyncio.wait_for(asyncio.gather(*(table.last_write[p] for p in parts)), 30)
    for p in parts:
        last = max(o for q, o in persisted if q == p)     # the last record's, once it is done
        got = await _read(broker.bootstrap, topic, p, last)
        assert got[-1][0] == last
        assert [(k, v) for _, k, v in got[-len(written[p]):]] == written[p]
        for key, value in dict(written[p]).items():       # keys written again: the latest
            assert table.data[key] == value
    await T.WRITES.drain(0)
    assert T.WRITES.unsent_bytes == 0


async def test_a_failed_write_fails_every_later_write_of_its_partition(broker, producer, table, monkeypatch):
    """A write that cannot be sent fails, and so does every later write of the partition, even
    one that reached the broker: a write's future stands for it and every earlier write, and
    the events acknowledged on it must not be committed past state that was lost."""
    send_batch = producer.send_batch
    calls = []

    async def failing_first(batch, topic, *, partition):
        calls.append(partition)
        if len(calls) == 1:
            raise KafkaTimeoutError("broker gone")
        return await send_batch(batch, topic, partition=partition)

    monkeypatch.setattr(producer, "send_batch", failing_first)
    table.write_many(2, _items(2, 0, 3))
    first = table.last_write[2]
    with pytest.raises(KafkaTimeoutError):
        await asyncio.wait_for(first, 30)
    table.write_many(2, _items(2, 1, 3))
    second = table.last_write[2]
    table.write_many(0, _items(0, 0, 3))        # another partition: not held by partition 2's failure
    other = table.last_write[0]
    with pytest.raises(KafkaTimeoutError):
        await asyncio.wait_for(second, 30)
    await asyncio.wait_for(other, 30)
    assert sorted(calls) == [0, 2, 2]           # the second write was sent, and still fails


async def test_waits_for_writes_not_yet_in_the_broker(broker, producer, table, monkeypatch):
    """`drain` waits while more than its limit of written bytes is not in the broker, and a
    stopping table (`on_stop`) waits for every write made."""
    send_batch = producer.send_batch
    sending, go = asyncio.Event(), asyncio.Event()

    async def held(batch, topic, *, partition):
        sending.set()
        await go.wait()
        return await send_batch(batch, topic, partition=partition)

    monkeypatch.setattr(producer, "send_batch", held)
    table.write_many(1, _items(1, 0, 10))
    table.write_many(2, _items(2, 0, 10))
    size = T.WRITES.unsent_bytes
    await sending.wait()
    drained = asyncio.ensure_future(T.WRITES.drain(size - 1))
    stopped = asyncio.ensure_future(table.on_stop())
    assert not (await asyncio.wait([drained, stopped], timeout=0.2))[0]     # held: both wait
    go.set()
    await asyncio.wait_for(asyncio.gather(drained, stopped), 30)
    assert T.WRITES.unsent_bytes == 0
    assert table.last_write[1].done() and table.last_write[2].done()
