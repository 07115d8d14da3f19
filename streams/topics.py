"""Every topic and table, named explicitly.

All input topics, `repartition` and the outputs have the same partition count and
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
STOP_FLUSH_S = 10.0    # how long a stopping worker waits for its last table writes and decisions
N = settings.partitions


def _topic(name: str):
    return app.topic(P + name, partitions=N, key_serializer="raw", value_serializer="raw")


inputs = {name: _topic(name) for name in INPUT_TOPICS}
proposals = _topic("proposals")
suppressed = _topic("proposals.suppressed")
status = _topic("proposal-status")      # each decision's lifecycle (rules.lifecycle)
dead_letters = _topic("dead-letters")
# Input records forwarded from a partition their key does not hash to (agents/ingest.py: `forward`),
# to the partition it does, with their key and timestamp, and the forward marks of event time.
repartition = _topic("repartition")


class Batches:
    """Records sent as record batches, in order per topic-partition: aiokafka's public
    `create_batch` and `send_batch`, one future per send of many records, where Faust's `topic.send` and
    `table[key] = value` cost a message, a future, Faust's buffer or channel, aiokafka's `send`,
    a delivery callback and sensors per record.

    `send` is synchronous: it builds the batches and hands them to a task (or adds its records
    to a send still waiting to be queued). A topic-partition's
    sends are queued in the producer in the order made, each after the one before it, and
    aiokafka keeps one batch of a partition in flight at a time, so they land in that order.
    `last[(topic, partition)]` is the latest send's future: done once it is in the broker, and
    failed if it or any earlier send to that topic-partition failed, so whoever waits on it
    (acknowledgements) never passes a record that was lost. The worker's table writes and its
    decisions share one (`WRITES`): one limit on what is not yet in the broker (`drain`), one
    flush when the worker stops (`flush`, from `Table.on_stop`)."""

    def __init__(self):
        self.last: dict[tuple[str, int], asyncio.Future] = {}
        self._queued: dict[tuple[str, int], asyncio.Future] = {}   # the latest send is queued
        self._open: dict[tuple[str, int], tuple] = {}   # a send not yet queued: (batches, future)
        self._unsent: dict[asyncio.Future, int] = {}   # send -> its bytes, until it is in the broker
        self.unsent_bytes = 0

    @staticmethod
    def producer(app):
        """aiokafka's producer under the app's Faust producer, if it runs (not in the agents'
        test driver)."""
        producer = app.producer
        if producer.buffer.state != "running":
            return None
        return producer._ensure_producer()

    def send(self, producer, topic: str, partition: int, items: list[tuple[bytes, bytes]],
             stamped: list[tuple[bytes | None, bytes, int, list]] | None = None):
        """Send `items`, (key, value) pairs, to the topic-partition; returns the future of the
        send they went into (`last`), whose result is (the last batch's metadata, the last
        record's offset). While a send to the topic-partition waits for the one before it to be
        queued, later items join it, so a burst of small sends becomes a few record batches,
        not one produce round trip each. `stamped` records, (key, value, timestamp ms,
        headers), are sent after `items`."""
        tp = (topic, partition)
        size = 0
        joining = self._open.get(tp)
        if joining is None:
            batches, batch = [], None
        else:
            batches, sent = joining
            batch = batches[-1]
        for key, value in items:
            size += len(key) + len(value)
            if batch is None or batch.append(timestamp=None, key=key, value=value) is None:
                batch = producer.create_batch()
                batch.append(timestamp=None, key=key, value=value)   # the first record always fits
                batches.append(batch)
        for key, value, ts, headers in stamped or ():
            size += len(key or b"") + len(value)
            if batch is None or batch.append(timestamp=ts, key=key, value=value, headers=headers) is None:
                batch = producer.create_batch()
                batch.append(timestamp=ts, key=key, value=value, headers=headers)
                batches.append(batch)
        if joining is None:
            queued = asyncio.get_running_loop().create_future()
            sent = asyncio.ensure_future(self._send(
                producer, topic, partition, batches, self._queued.get(tp), self.last.get(tp), queued))
            self._open[tp] = (batches, sent)
            self._queued[tp] = queued
            self.last[tp] = sent
            self._unsent[sent] = 0
            sent.add_done_callback(functools.partial(self._done, tp, queued))
        self._unsent[sent] += size
        self.unsent_bytes += size
        return sent

    async def _send(self, producer, topic: str, partition: int, batches: list, queued_before,
                    sent_before, queued: asyncio.Future):
        try:
            if queued_before is not None:
                await queued_before                   # never fails: set in `finally`
            del self._open[topic, partition]          # nothing joins it from here on
            for batch in batches:
                batch.close()     # ready to send at once, no linger
            delivered = [await producer.send_batch(b, topic, partition=partition) for b in batches]
        finally:
            queued.set_result(None)
        for fut in delivered:
            last = await fut
        if sent_before is not None:
            await sent_before         # in the broker already (one batch in flight), or it failed
        return last, last.offset + batches[-1].record_count() - 1

    def _done(self, tp: tuple[str, int], queued: asyncio.Future, sent: asyncio.Future) -> None:
        self.unsent_bytes -= self._unsent.pop(sent)
        if not queued.done():         # cancelled before it ran: the next send must not wait
            queued.set_result(None)
        if self._open.get(tp, (None, None))[1] is sent:
            del self._open[tp]
        if not sent.cancelled():
            sent.exception()          # retrieved: the waiters (acknowledgements) report a failure

    async def drain(self, high: int) -> None:
        """Wait while more than `high` bytes of sends are not yet in the broker."""
        while self.unsent_bytes > high and self._unsent:
            await asyncio.wait(list(self._unsent), return_when=asyncio.FIRST_COMPLETED)

    async def flush(self, timeout: float) -> None:
        """Wait, at most `timeout` seconds, for every send made so far."""
        if self._unsent:
            await asyncio.wait(list(self._unsent), timeout=timeout)


WRITES = Batches()


class Table(faust.Table):
    """A table whose writes a worker makes in batches (`write_many`, through `WRITES`), and that
    keeps, per changelog partition, a future of its latest write (`last_write`): done once the
    broker has that write and every earlier one to the partition, failed if any of them failed.
    Live, a changelog write comes with about one event in seven, and Faust's write per key took
    a tenth of the worker's CPU."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_write: dict[int, asyncio.Future] = {}
        # key -> the changelog partition it was last restored from or written to: a partition's
        # state is what its changelog partition holds, whatever partition the key hashes to
        self.partition_of: dict[bytes, int] = {}

    def apply_changelog_batch(self, batch) -> None:
        batch = list(batch)
        partition_of = self.partition_of
        for event in batch:
            message = event.message
            partition_of[message.key] = message.partition
        super().apply_changelog_batch(batch)

    def keys_of(self, partition: int, hashed) -> list[bytes]:
        """The keys of changelog partition `partition`: those restored from or written to it, and
        of the others, those `hashed(key)` places there (a store that resumed from local files,
        RocksDB, holds keys no changelog record named since the process started)."""
        recorded = self.partition_of
        out = []
        for k in self.data.keys():
            p = recorded.get(k)
            if p == partition or (p is None and hashed(k) == partition):
                out.append(k)
        return out

    def send_changelog(self, partition, key, value, key_serializer=None, value_serializer=None):
        fut = super().send_changelog(partition, key, value, key_serializer, value_serializer)
        self.last_write[fut.message.partition] = fut
        return fut

    def write_many(self, partition: int, items: list[tuple[bytes, bytes]]) -> None:
        """Set each (key, value) of `items`, in order; every key belongs to changelog partition
        `partition`. Synchronous, like `table[key] = value`, and called where that can be (the
        RocksDB store asks the current event for the partition: `streams.inbox.writing_for`).
        The store is set as `table[key] = value` sets it; the changelog gets the records as
        record batches (`Batches`). Without a running producer (the agents' test driver) it is
        `table[key] = value` for each."""
        producer = Batches.producer(self.app)
        if producer is None:
            for key, value in items:
                self[key] = value
                self.partition_of[key] = partition
            return
        if not items:
            return
        data, partition_of = self.data, self.partition_of
        for key, value in items:
            data[key] = value
            partition_of[key] = partition
        write = WRITES.send(producer, self.changelog_topic.get_topic_name(), partition, items)
        if self.last_write.get(partition) is not write:      # else it joined the send before
            write.add_done_callback(self._persisted)
        self.last_write[partition] = write

    def _persisted(self, write: asyncio.Future) -> None:
        """As Faust's `_on_changelog_sent`: a store that keeps its changelog offset (RocksDB)
        learns the last record's."""
        if write.cancelled() or write.exception() is not None:
            return
        last, offset = write.result()
        if self.app.in_transaction:
            self.app.tables.persist_offset_on_commit(self.data, last.topic_partition, offset)
        else:
            self.data.set_persisted_offset(last.topic_partition, offset)

    async def on_stop(self) -> None:
        """Faust stops the tables before its producer: let the writes made so far (decisions
        too) land, so that their events are acknowledged and committed."""
        await WRITES.flush(STOP_FLUSH_S)
        await super().on_stop()


# Per-customer state, one orjson document per customer, and per partition a document of what
# cannot be derived from the customers (watermarks, counters) under a key that is not UTF-8
# (`agents.ingest.meta_key`), so that it shares the customers' changelog partition and order.
customer_state = app.tables.add(Table(app, name="customer-state", partitions=N, key_type=bytes,
                                      value_type=bytes, beacon=app.tables.beacon))
# Where earlier versions kept the partition documents: read, never written.
partition_state = app.Table("partition-state", partitions=N, key_type=bytes, value_type=bytes)
