"""A test driver for the worker's ingest, in the manner of Kafka Streams' TopologyTestDriver:
records go in with their topic, partition, offset and timestamp; what comes out is read back
from the output topics (in-memory channels), the table (the memory store: what the changelog
holds) and the acknowledgements Faust's consumer was given. `crash` drops every partition's
runtime, as a rebalance or a dead worker does, and `redeliver` gives its next owner what Kafka
would: each topic-partition's records from the first one not acknowledged."""
from __future__ import annotations

import orjson

import agents.ingest as A
from faust.types import Message
from streams import topics as T
from streams.app import app, settings
from streams.partitioning import partition_for


class IngestDriver:
    def __init__(self, monkeypatch):
        self.log: dict[tuple[str, int], list[Message]] = {}     # (topic, partition) -> records, by offset
        self.acked: set[tuple[str, int, int]] = set()           # (topic name, partition, offset)
        self.out = {}
        for name in ("proposals", "suppressed", "status", "dead_letters"):
            channel = app.channel(maxsize=10_000)
            monkeypatch.setattr(T, name, channel)
            self.out[name] = channel.clone(is_iterator=True)
        monkeypatch.setattr(app.consumer, "ack", self._ack)
        app.flow_control.resume()      # as after an assignment: the inbox hands records on
        self.ingest = A.Ingest(app.ingest.inbox, None, settings.partitions)   # the worker's, fresh
        monkeypatch.setattr(app, "ingest", self.ingest)
        for table in (T.customer_state, T.partition_state):
            table.data.clear()
        T.customer_state.partition_of.clear()

    def close(self) -> None:
        """Drop the changelog writes the table queued in Faust's producer buffer (no producer runs
        here): left there, they hold up the next test that waits for the buffer to ebb."""
        pending = app.producer.buffer.pending
        while not pending.empty():
            pending.get_nowait()

    def _ack(self, message) -> None:
        self.acked.add((message.topic, message.partition, message.offset))

    # ------------------------------------------------------------------ in --
    async def pipe(self, topic: str, value, ts_ms: int, key: str | None = None, partition: int | None = None,
                   headers=None) -> Message:
        """Append a record to an input topic-partition (next offset) and hand it to the ingest."""
        if isinstance(value, dict):
            key = key or value.get("customer_id")
            value = orjson.dumps(value)
        if partition is None:
            partition = partition_for(key, settings.partitions) if key is not None else 0
        name = (T.inputs[topic] if topic in T.inputs else getattr(T, topic)).get_topic_name()
        log = self.log.setdefault((name, partition), [])
        message = Message(name, partition, len(log), ts_ms / 1000, 0, headers,
                          key.encode() if key is not None else None, value, None,
                          generation_id=app.consumer_generation_id)
        log.append(message)
        await self.ingest.deliver([message])
        return message

    async def tick(self, partition: int, at_ms: int) -> None:
        """The batch-end timer's step for the partition: stream time, and the end of its batch."""
        await self.ingest.end_batch(partition, at_ms)

    async def advance_wall_clock(self, now_ms: int) -> None:
        """The live clock's move (no record): stream time to now minus the lateness."""
        await self.ingest.advance(now_ms)

    # ----------------------------------------------------------------- out --
    def read(self, name: str = "proposals") -> list[dict]:
        """What was sent to an output topic since the last read."""
        channel, got = self.out[name], []
        while not channel.empty():
            got.append(orjson.loads(channel.queue.get_nowait().value))
        return got

    def stored(self, customer_id: str) -> dict | None:
        raw = T.customer_state.get(customer_id.encode())
        return orjson.loads(raw) if raw is not None else None

    def unacknowledged(self) -> list[Message]:
        """Every record from the first one not acknowledged on its topic-partition: what a commit
        leaves for the next owner to read."""
        left = []
        for (name, partition), log in self.log.items():
            first = next((m.offset for m in log if (name, partition, m.offset) not in self.acked), None)
            if first is not None:
                left += log[first:]
        return left

    # -------------------------------------------------------------- crashes --
    def crash(self) -> None:
        """The worker loses every partition (a rebalance, or it died): the tables stay."""
        self.ingest.partitions.clear()

    async def redeliver(self) -> int:
        """The next owner reads every topic-partition again from its first unacknowledged record,
        in offset order per topic-partition; returns how many records it read."""
        records = self.unacknowledged()
        for m in records:
            again = Message(m.topic, m.partition, m.offset, m.timestamp, 0, m.headers, m.key, m.value, None,
                            generation_id=app.consumer_generation_id)
            await self.ingest.deliver([again])
        return len(records)
