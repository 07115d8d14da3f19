"""`Inbox`: input records from Faust's consumer to a handler in batches, outside Faust's
per-record path.

Faust hands each record it fetches to the conductor one at a time (a generator step, the
fetcher's wait, the conductor's lock), which decodes it into an `Event` and puts it in the queue
of every channel subscribed to its topic; each agent's stream takes it from there: a sensor call,
the task-local current event, processors, an acknowledgement. On the benchmark's backlog the path
from the conductor's callback on was two thirds of a no-op agent's cost per record, and the
fetcher's per-record steps before it most of the rest (bench/README.md).

An inbox takes the records of its topics (`App.inboxes`) from each fetch as a whole
(`streams.transport.InboxFetch`: the consumer's messages of a topic-partition, with Faust's
read-offset and gap bookkeeping), and queues them for one coroutine (`run`), in the order fetched:

* every message is tracked for acknowledgement as a stream would track it; the handler
  acknowledges each itself once it is done with it (`app.consumer.ack(message)`), and may keep
  it for later, as the worker keeps events waiting for stream time;
* nothing is queued or handed on while Faust has flow suspended (rebalancing);
* a full queue (`maxsize`) holds the fetcher until it has drained to half;
* like a stream, `run` drops the messages of an earlier consumer generation (fetched before a
  rebalance: Faust seeks back to the committed offsets, and the partition's owner reads them
  again);
* unlike a channel's queue, the inbox is not cleared when Faust resumes flow. Faust's recovery
  resumes the input partitions, seeks them to their committed offsets and only then resumes flow,
  clearing its channels: records fetched in between would be lost with them (the fetcher's read
  offset is past them, and nothing seeks again), and the partition would get nothing more after a
  restart with a long recovery. Kept, they are handed on; a record fetched twice (across a seek)
  is recognised by its offset.

If a record of an inbox topic reaches the conductor anyway, `streams.transport.InboxConductor` hands it
to the inbox too (`handler`), so it is never decoded into a channel nobody reads.

Table writes outside stream iteration need a current event to know their partition:
`writing_for(topic, partition)` gives them one, as a stream iterating that topic-partition would.
"""
from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from typing import Awaitable, Callable

from faust.streams import _current_event
from faust.types import TP, Message

from streams.timeslice import TimeSlice

Handler = Callable[[Message], Awaitable[None]]


class Inbox:
    """The records of `topics` (Faust topics, by any name), queued as fetched for `run`."""

    def __init__(self, app, topics: dict, maxsize: int | None = None):
        self.app = app
        self.names = {topic.get_topic_name(): name for name, topic in topics.items()}
        self.maxsize = maxsize or app.conf.stream_buffer_maxsize * len(topics)
        self._items: deque = deque()
        self._loop = None                 # the loop `_ready` and `_room` belong to (`_bind`)
        for name in self.names:
            app.inboxes[name] = self
        for topic in topics.values():
            app.topics.add(topic)         # subscribed and acknowledged like an agent's topic

    def __len__(self) -> int:
        return len(self._items)

    def _bind(self) -> None:
        """The events, for the running loop (an asyncio.Event belongs to the loop that first
        waits on it; the inbox is made at import, before the worker's loop runs)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._ready = asyncio.Event()     # set while items wait
            self._room = asyncio.Event()      # set while the queue is at most half full
            if self._items:
                self._ready.set()
            if len(self._items) <= self.maxsize // 2:
                self._room.set()

    async def put(self, messages: list) -> None:
        """Queue a topic-partition's messages, in offset order, once flow is active (Faust's
        `flow_control.acquire`), its producer buffer is below its limit (`wait_until_ebb`, as
        the conductor waits for both before each record) and the queue has room."""
        self._bind()
        app = self.app
        flow_control = app.flow_control
        buffer = app.producer.buffer
        if not flow_control.is_active():
            await flow_control.acquire()
        if app.conf.producer_threaded or buffer.pending.qsize() > buffer.max_messages:
            await buffer.wait_until_ebb()
        while len(self._items) >= self.maxsize:
            self._room.clear()
            await self._room.wait()
        track = app.consumer.track_message
        for message in messages:
            if not message.tracked:
                message.tracked = True
                track(message)
        self._items.extend(messages)
        self._ready.set()

    def handler(self, tp: TP):
        """The conductor's callback for one of the inbox's topic-partitions, should one of its
        records take Faust's per-record path."""
        async def on_message(message: Message) -> None:
            await self.put([message])
        return on_message

    async def take(self, most: int = 1000) -> list:
        """The next messages: waits for one, then takes what else is queued, up to `most`."""
        self._bind()
        items = self._items
        while not items:
            self._ready.clear()
            await self._ready.wait()
        if len(items) <= most:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(most)]
        if len(items) <= self.maxsize // 2:
            self._room.set()
        return batch

    async def run(self, handler: Handler) -> None:
        """Hand every current message to `handler`, one at a time, in the order fetched."""
        while True:
            await self.deliver(await self.take(), handler)

    async def deliver(self, messages, handler: Handler) -> None:
        """Hand `handler` each of `messages` but those fetched before the latest rebalance; while
        Faust has flow suspended (rebalancing), wait until it resumes. The event loop runs its
        other callbacks between records now and then (`TimeSlice`): a handler that does not wait
        would otherwise hold them for the whole batch."""
        app = self.app
        flow_control = app.flow_control
        turn = TimeSlice()
        for message in messages:
            if not flow_control.is_active():
                await flow_control.acquire()
            if message.generation_id == app.consumer_generation_id:
                await handler(message)
            await turn.pause()


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
