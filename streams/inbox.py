"""`Inbox`: input records from Faust's consumer to a handler, without Faust's per-record stream.

Faust hands each record it fetches to the conductor, which decodes it into an `Event`, puts it in
the queue of every channel subscribed to its topic, and each agent's stream takes it from there:
a sensor call, the task-local current event, processors, an acknowledgement. Measured on the
benchmark's backlog, that path (from the conductor's callback on) was two thirds of a no-op
agent's cost per record: the no-op agent consumed 20,389 events/s, the same app counting the
records in the conductor's callback instead 52,363 (one run each, `bench/README.md` item 34).

An inbox takes the records of its topics at the conductor (`streams.transport.Conductor` asks
`App.inboxes` for a handler) and queues the consumer's messages themselves, as Faust's channels
queue events: a flow-controlled queue (paused while Faust rebalances, cleared when it resumes),
the partitions of a full queue no longer fetched until it drains (the conductor's own pressure
callbacks), and every message tracked for acknowledgement as a stream would. `run` hands them to
one coroutine, in the order fetched; the handler acknowledges each message itself, once it is
done with it (`message.ack(app.consumer)`), and may keep it for later, as the worker keeps events
waiting for stream time.

Like a stream, `run` drops the messages of an earlier consumer generation (fetched before a
rebalance, read again by the partition's next owner) and any taken while flow is suspended.

Table writes outside stream iteration need a current event to know their partition:
`writing_for(topic, partition)` gives them one, as a stream iterating that topic-partition would.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Awaitable, Callable

from faust.streams import _current_event
from faust.types import TP, Message

Handler = Callable[[Message], Awaitable[None]]


class Inbox:
    """The records of `topics` (Faust topics, by any name), queued as fetched for `run`."""

    def __init__(self, app, topics: dict, maxsize: int | None = None):
        self.app = app
        self.names = {topic.get_topic_name(): name for name, topic in topics.items()}
        self.maxsize = maxsize or app.conf.stream_buffer_maxsize * len(topics)
        self._queue = None
        for name in self.names:
            app.inboxes[name] = self
        for topic in topics.values():
            app.topics.add(topic)         # subscribed and acknowledged like an agent's topic

    @property
    def queue(self):
        if self._queue is None:           # created in the running loop (asyncio.Queue binds to it)
            self._queue = self.app.FlowControlQueue(maxsize=self.maxsize, clear_on_resume=True)
        return self._queue

    def handler(self, tp: TP):
        """The conductor's callback for one of the inbox's topic-partitions (what Faust's
        `TopicConductor` does for a channel, without decoding an event)."""
        app = self.app
        queue = self.queue
        flow_control = app.flow_control
        buffer = app.producer.buffer
        threaded = app.conf.producer_threaded      # then `buffer.size` is not the pending queue's
        consumer = app.consumer
        on_topic_buffer_full = app.sensors.on_topic_buffer_full

        def on_pressure_high() -> None:
            on_topic_buffer_full(tp)
            consumer.on_buffer_full(tp)

        def on_pressure_drop() -> None:
            consumer.on_buffer_drop(tp)

        async def on_message(message: Message) -> None:
            # the conductor's `await acquire_flow_control()` and `await wait_until_producer_ebb()`,
            # checked before awaiting: Faust's settings lookup in `buffer.size` and the two
            # coroutines were a tenth of the fetcher's time per record
            if not flow_control.is_active():
                await flow_control.acquire()
            if threaded or buffer.pending.qsize() > buffer.max_messages:
                await buffer.wait_until_ebb()
            if not message.tracked:
                message.tracked = True
                consumer.track_message(message)
            if queue.full():
                on_topic_buffer_full(tp)
                await queue.put(message)
            else:
                queue.put_nowait_enhanced(message, on_pressure_high=on_pressure_high,
                                          on_pressure_drop=on_pressure_drop)
        return on_message

    async def take(self, most: int = 1000) -> list:
        """The next messages: waits for one, then takes what else is queued, up to `most`."""
        queue = self.queue
        batch = [await queue.get()]
        while len(batch) < most and not queue.empty():
            batch.append(queue.get_nowait())
        return batch

    async def run(self, handler: Handler) -> None:
        """Hand every current message to `handler`, one at a time, in the order fetched."""
        while True:
            await self.deliver(await self.take(), handler)

    async def deliver(self, messages, handler: Handler) -> None:
        """Hand `handler` each of `messages` that a stream would not skip: one fetched before the
        latest rebalance, or taken while Faust has flow suspended (rebalancing)."""
        app = self.app
        flow_control = app.flow_control
        for message in messages:
            if message.generation_id == app.consumer_generation_id and flow_control.is_active():
                await handler(message)


class _Writer:
    """What Faust's tables and stores read of the current event: `.message.topic`, `.partition`."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int):
        self.message = Message(topic, partition, -1, 0.0, 0, None, None, None, None)


_WRITERS: dict[tuple[str, int], _Writer] = {}


@contextlib.contextmanager
def writing_for(topic: str, partition: int):
    """Table writes in the block go to `partition`'s changelog, as if a stream of `topic` were
    processing a record of that partition (a table is written by a stream's current event:
    `Table.partition_for_key`, and the RocksDB store's `_set`)."""
    writer = _WRITERS.get((topic, partition))
    if writer is None:
        writer = _WRITERS[(topic, partition)] = _Writer(topic, partition)
    token = _current_event.set(weakref.ref(writer))
    try:
        yield
    finally:
        _current_event.reset(token)
