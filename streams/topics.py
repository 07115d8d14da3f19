"""Every topic and table, named explicitly.

All input topics, `ticks` and the outputs have the same partition count and
are keyed by customer_id, so they are co-partitioned: partition p of every
topic belongs to the same worker and no repartitioning is needed. Table names
become changelog topics (`<app_id>-<table>-changelog`): never rename them.
"""
from __future__ import annotations

import asyncio
import functools

import faust

from rules.engine import INPUT_TOPICS
from streams.app import app, settings

P = settings.topic_prefix
STOP_FLUSH_S = 10.0    # how long a stopping worker waits for its last table writes
N = settings.partitions


def _topic(name: str):
    return app.topic(P + name, partitions=N, key_serializer="raw", value_serializer="raw")


inputs = {name: _topic(name) for name in INPUT_TOPICS}
ticks = _topic("ticks")
proposals = _topic("proposals")
suppressed = _topic("proposals.suppressed")
dead_letters = _topic("dead-letters")


class Table(faust.Table):
    """A table whose writes a worker makes in batches (`write_many`), and that keeps, per
    changelog partition, a future of its latest write (`last_write`): done once the broker has
    that write and every earlier one to the partition.

    Faust's `table[key] = value` costs a message, a future, a trip through Faust's producer
    buffer and a delivery callback per key; live, with a changelog write for about one event in
    seven, that path took a tenth of the worker's CPU (bench/README.md, item 51). `write_many`
    sets the keys in the store just as `table[key] = value` does and hands the changelog the
    partition's keys as record batches (aiokafka's `create_batch` and `send_batch`), one future
    per batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_write: dict[int, asyncio.Future] = {}
        self._queued: dict[int, asyncio.Future] = {}   # partition -> its latest write is queued
        self._unsent: dict[asyncio.Future, int] = {}   # write -> its bytes, until it is in the broker
        self.unsent_bytes = 0

    def send_changelog(self, partition, key, value, key_serializer=None, value_serializer=None):
        fut = super().send_changelog(partition, key, value, key_serializer, value_serializer)
        self.last_write[fut.message.partition] = fut
        return fut

    def write_many(self, partition: int, items: list[tuple[bytes, bytes]]) -> None:
        """Set each (key, value) of `items`, in order; every key belongs to changelog partition
        `partition`. Synchronous, like `table[key] = value`, and called where that can be (the
        RocksDB store asks the current event for the partition: `streams.inbox.writing_for`).
        Without a running producer (the agents' test driver) it is `table[key] = value` for each.

        A partition's writes reach the changelog in the order made: each is queued in the
        producer only after the one before it, and aiokafka keeps one batch of a partition in
        flight at a time. `last_write[partition]` fails if this write or an earlier one failed."""
        producer = self._producer()
        if producer is None:
            for key, value in items:
                self[key] = value
            return
        if not items:
            return
        data, batches, size = self.data, [], 0
        batch = None
        for key, value in items:
            data[key] = value
            size += len(key) + len(value)
            if batch is None or batch.append(timestamp=None, key=key, value=value) is None:
                batch = producer.create_batch()
                batch.append(timestamp=None, key=key, value=value)   # the first record always fits
                batches.append(batch)
        for batch in batches:
            batch.close()         # ready to send at once, no linger; nothing else joins it
        queued = asyncio.get_running_loop().create_future()
        write = asyncio.ensure_future(self._send(
            producer, partition, batches, self._queued.get(partition), self.last_write.get(partition),
            queued))
        self._queued[partition] = queued
        self.last_write[partition] = write
        self._unsent[write] = size
        self.unsent_bytes += size
        write.add_done_callback(functools.partial(self._written, queued))

    def _producer(self):
        """aiokafka's producer under Faust's, if it runs."""
        producer = self.app.producer
        if producer.buffer.state != "running":
            return None
        return producer._ensure_producer()

    async def _send(self, producer, partition: int, batches: list, queued_before, written_before,
                    queued: asyncio.Future):
        topic = self.changelog_topic.get_topic_name()
        try:
            if queued_before is not None:
                await queued_before                   # never fails: set in `finally`
            delivered = [await producer.send_batch(b, topic, partition=partition) for b in batches]
        finally:
            queued.set_result(None)
        for fut in delivered:
            last = await fut
        if written_before is not None:
            await written_before      # in the broker already (one batch in flight), or it failed
        # as Faust's `_on_changelog_sent`: a store that keeps its changelog offset (RocksDB)
        # learns the last record's (the batch's future has its first record's)
        offset = last.offset + batches[-1].record_count() - 1
        if self.app.in_transaction:
            self.app.tables.persist_offset_on_commit(self.data, last.topic_partition, offset)
        else:
            self.data.set_persisted_offset(last.topic_partition, offset)
        return last

    def _written(self, queued: asyncio.Future, write: asyncio.Future) -> None:
        self.unsent_bytes -= self._unsent.pop(write)
        if not queued.done():         # cancelled before it ran: the next write must not wait
            queued.set_result(None)
        if not write.cancelled():
            write.exception()         # retrieved: the writes' waiters (acks) report a failure

    async def drain(self, high: int) -> None:
        """Wait while more than `high` bytes of writes are not yet in the broker."""
        while self.unsent_bytes > high and self._unsent:
            await asyncio.wait(list(self._unsent), return_when=asyncio.FIRST_COMPLETED)

    async def on_stop(self) -> None:
        """Faust stops the tables before its producer: let the writes made so far land, so that
        their events are acknowledged and committed."""
        if self._unsent:
            await asyncio.wait(list(self._unsent), timeout=STOP_FLUSH_S)
        await super().on_stop()


# Per-customer state, one orjson document per customer, and per partition a document of what
# cannot be derived from the customers (watermarks, counters) under a key that is not UTF-8
# (`agents.engine.meta_key`), so that it shares the customers' changelog partition and order.
customer_state = app.tables.add(Table(app, name="customer-state", partitions=N, key_type=bytes,
                                      value_type=bytes, beacon=app.tables.beacon))
# Where earlier versions kept the partition documents: read, never written.
partition_state = app.Table("partition-state", partitions=N, key_type=bytes, value_type=bytes)
