"""`App`: faust.App with ten fixes the worker and the benchmark's no-op app share.

1. The consumer's fetch wait, a setting Faust does not expose.

Faust creates its worker consumer with `fetch_max_wait_ms=1500`. A broker that answers a
fetch as soon as data arrives makes that harmless, but a broker that holds an empty fetch for
the whole wait (the embedded tansu does: measured, a new record reached a plain aiokafka
consumer after about the wait, whatever the wait was) adds up to that wait to every hop.
`App(fetch_max_wait_ms=...)` sets it; on a Kafka broker a shorter wait only means more empty
fetch requests while a partition is idle.

2. The root logger's level. The worker's `-l` level is set on its log handler, but the root
logger stays at DEBUG (Faust's start-up spinner handler listens at DEBUG), so every debug call in
aiokafka and Faust, several per event, builds a record that is then dropped: measured at about 7%
of the worker's time. A task raises the root logger to the level asked for.

3. Changelog end offsets. tansu 0.6.0 reports a partition's end offset as its last batch's base
offset + 1 (8 records sent in batches of 5 and 3: end offset 6), so Faust's table recovery
stopped before the last records of the last batch. If their events were already committed, a
worker taking over restored stale customers and never saw those events again. The end offsets Faust asks for are checked by reading the
partition from end - 1: the batch found there gives the true end. On Kafka that is one fetch
per partition at each rebalance, and the same number.

4. The heap built at start-up, frozen for the garbage collector once the app runs (see
`_freeze_startup_heap`): a full collection no longer walks it, so it stalls events for a few
milliseconds instead of about fifty.

5. The fetcher's per-record wait. Faust hands each record to the conductor with
`wait_first(callback(message), suspend_flow.wait())`: four tasks per record (the callback, the
flow event, the consumer's stopped and crashed events), an `asyncio.wait`, and the cancellation of
the three losers. The callback nearly always finishes without waiting (its channel's buffer has
room, flow is not suspended): `_Consumer.wait_first` runs it in place, and only a callback that
has to wait is handed to Faust's own `wait_first`, as before (see `_resume`).

6. Stream buffers refill at half (`RefillAtHalf`, the queue of every channel, from
`App.FlowControlQueue`): a fetcher waiting for room in a full buffer is woken once it is down to
half, so it waits once per half buffer, not once per record.

7. Paused partitions are paused in the client (`PausedInTheClient`). Faust "pauses" a partition
by leaving it out of the fetches it asks aiokafka for, but aiokafka goes on fetching it. After
recovery that is every changelog partition of the worker's own tables: the first state write to
each was fetched, never taken, and aiokafka holds back every fetch to a broker while any fetched
records wait untaken, for up to 100 ms (its `prefetch_backoff`) each time. Writes start with the
load, one partition every `UPSELL_COMMIT_INTERVAL` / partitions: the first second of load had
decisions 100-160 ms late. Faust's pauses and resumes are now applied to aiokafka too.

8. Inboxes (`streams/inbox.py`). A topic named in `App.inboxes` is not handed to channels and
streams: should one of its records reach the conductor, it goes to the inbox's handler.

9. Inbox records skip the fetcher's per-record path (`InboxFetch`): each fetch's records of an
inbox topic go to the inbox as one list of the consumer's messages, with the bookkeeping Faust's
fetcher does per record (read offsets, gaps, the commit count, the monitor's end offsets). The
other topics' records go on through Faust's per-record path. The worker's inbox takes the input
topics (agents/engine.py; the read model has a consumer of its own); the no-op app takes its input
topics through an inbox only with NOOP_INBOX=1, else its agents measure Faust's own per-record
path.

10. The consumer on the app's event loop (`_ConsumerInLoop`, unless `UPSELL_CONSUMER_THREAD=1`).
Faust runs aiokafka's consumer in a thread of its own with its own event loop. Under the GIL that
thread runs only while the main thread lets go: a busy main thread holds the GIL for up to its
switch interval (5 ms) each time the consumer thread wakes (a fetch response to decode, a call
to serve), and every call between the two (each `getmany`) is a method-queue round trip through
both loops. On the worker's own loop, the fetches are aiokafka's tasks among the app's. Measured:
the same CPU per event, and a shorter tail under load (bench/README.md item 47); that the GIL
handoffs are why is my reading, not measured.

11. Full collections on a timer (`full_collections`, `UPSELL_FULL_GC_INTERVAL`, default 60 s). After
fix 4, Python still ran a full collection whenever enough objects had lived through two young
ones: about every 3 s in the latency benchmark's worker, whose heap grows with its customers,
each stalling the events in flight for 11-21 ms. Now the collector's own full collections are off
and one runs every interval instead; young collections are as before. Cyclic garbage that
outlives two young collections waits up to an interval to be freed (bench/README.md item 58).

Fixes 1, 3, 5, 6, 7, 8, 9 and 10 lean on internals of faust-streaming 0.15.3, mode-streaming
0.7.1 and asyncio.Queue (`_putters`, `_wakeup_next`; fixes 8 and 9: the conductor's
`_build_handler`, the consumer's `_wait_next_records`, `_read_offset`, `_add_gap`, `_n_acked` and
Faust's current-event context variable; fix 10: mode's `ServiceThread` start and stop steps):
pyproject.toml pins the packages; asyncio.Queue's are CPython's (checked on 3.11 only). The tests
in tests/test_transport.py, tests/test_inbox.py and tests/integration/test_consumer_loop.py and the
integration suite check them on every run.
"""
from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import types

import aiokafka
import faust
import faust.transport.conductor
from faust.transport.drivers import aiokafka as driver
from mode import Service
from mode.services import WaitResults
from mode.utils.queues import ThrowableQueue


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms   # read by consumer.start()
        return consumer

    async def _highwaters(self, partitions):
        """End offsets, checked against the partition's last batch (fix 3 above)."""
        ends = dict(await super()._highwaters(partitions))
        check = {tp: end for tp, end in ends.items() if end}
        if not check:
            return ends
        reader = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=driver.server_list(self.transport.url, self.transport.default_port),
            enable_auto_commit=False,
            **driver.credentials_to_aiokafka_auth(self.app.conf.broker_credentials, self.app.conf.ssl_context))
        await reader.start()
        try:
            reader.assign([aiokafka.TopicPartition(tp.topic, tp.partition) for tp in check])
            for tp, end in check.items():
                reader.seek(aiokafka.TopicPartition(tp.topic, tp.partition), end - 1)
            left = set(check)
            while left:
                got = await reader.getmany(*[aiokafka.TopicPartition(t.topic, t.partition) for t in left],
                                           timeout_ms=1000)
                if not got:
                    break           # nothing at end - 1 (compacted away): the reported end stands
                for tp, records in got.items():     # aiokafka's TopicPartition equals Faust's TP
                    ends[tp] = max(ends[tp], records[-1].offset + 1)
                    left.discard(tp)
        finally:
            await reader.stop()
        return ends


class InPlaceWaitFirst:
    """Fix 5, for a `mode.Service` with a `suspend_flow` event (Faust's consumer)."""

    async def wait_first(self, *coros, timeout=None):
        """Fix 5: the fetcher's `wait_first(callback(message), self.suspend_flow.wait())`, with the
        callback run in place while it need not wait. Anything else is Faust's own `wait_first`."""
        if (len(coros) == 2 and timeout is None and asyncio.iscoroutine(coros[0])
                and asyncio.iscoroutine(coros[1]) and not self.suspend_flow.is_set()
                and not self._stopped.is_set() and not self._crashed.is_set()):
            callback = coros[0]
            try:
                waiting_on = callback.send(None)
            except StopIteration as done:
                coros[1].close()         # the flow event's wait, never started
                return WaitResults([callback], [done.value], False)
            except BaseException:
                coros[1].close()
                raise
            # it has to wait (a full buffer, flow control): as Faust does, it races the flow event
            coros = (_resume(callback, waiting_on), coros[1])
        return await super().wait_first(*coros, timeout=timeout)


class PausedInTheClient:
    """Fix 7, for Faust's consumer: the partitions Faust pauses are paused in aiokafka too."""

    def pause_partitions(self, tps) -> None:
        tps = list(tps)
        super().pause_partitions(tps)
        self._in_client("pause", tps)

    def resume_partitions(self, tps) -> None:
        tps = list(tps)
        super().resume_partitions(tps)
        self._in_client("resume", tps)

    def _in_client(self, action: str, tps: list) -> None:
        thread = getattr(self, "_thread", None)
        client = getattr(thread, "_consumer", None)
        if client is None or not tps:
            return                    # not started: a new assignment starts unpaused anyway
        try:
            thread.thread_loop.call_soon_threadsafe(pause_in_client, client, action, tps)
        except RuntimeError:          # its loop is closed: the consumer has stopped (shutting down)
            pass


def pause_in_client(client: aiokafka.AIOKafkaConsumer, action: str, tps) -> None:
    """`client.pause(...)` or `client.resume(...)` for those of `tps` the client has assigned
    (others would raise). Run in the client's own thread: resuming sets a future of its loop."""
    assigned = client.assignment()
    mine = [aiokafka.TopicPartition(tp.topic, tp.partition) for tp in tps if tp in assigned]
    if mine:
        getattr(client, action)(*mine)


class InboxFetch:
    """Fix 9, for Faust's consumer: each fetch's records of an inbox topic (`App.inboxes`) go to
    the inbox as a whole, not one at a time through the fetcher, the conductor and a channel."""

    async def _wait_next_records(self, timeout):
        records, active_partitions = await super()._wait_next_records(timeout)
        inboxes = self.app.inboxes
        if not records or not inboxes or not self.flow_active or self.should_stop:
            return records, active_partitions       # Faust's getmany does the rest (or seeks back)
        for tp in [tp for tp in records if tp.topic in inboxes]:
            # the partitions Faust would deliver from (the rest it drops, and so do we: left in)
            if active_partitions is None or tp in active_partitions or tp in self._buffered_partitions:
                await self._to_inbox(inboxes[tp.topic], tp, records.pop(tp))
                if not self.flow_active or self.should_stop:
                    break                               # a rebalance began: Faust seeks back
        return records, active_partitions

    async def _to_inbox(self, inbox, tp, records) -> None:
        """What Faust's fetcher does for each record (`Consumer._drain_messages`: skip what was
        read already, note gaps in the offsets for the commit, count towards `commit_every`)
        and `getmany` (the message, the end offset for the monitor), for a partition's records."""
        generation, start = self.app.consumer_generation_id, self._read_offset[tp]
        r_offset = start
        acks_enabled = self.app.topics.acks_enabled_for(tp.topic)
        to_message = self._to_message
        messages = []
        for record in records:
            offset = record.offset
            if r_offset is None or offset >= r_offset:
                if acks_enabled and r_offset and offset - r_offset > 1:
                    # the offsets that never come (Faust passes `offset`, so its gap covers the
                    # record just read too, and a commit could pass it before it is acknowledged)
                    await self._add_gap(tp, r_offset + 1, offset - 1)
                messages.append(to_message(tp, record))
                r_offset = offset
        if not messages:
            return
        self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
        await inbox.put(messages)
        # The put may have waited (flow suspended, a full producer buffer or inbox): if Faust
        # sought the partition meanwhile (a rebalance, the end of a recovery), its read offset
        # stands, and what was sought back is read again (a copy already queued is recognised
        # by its offset; one of an earlier generation is dropped when delivered).
        if self.app.consumer_generation_id == generation and self._read_offset[tp] == start:
            self._read_offset[tp] = r_offset
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()


class _ConsumerInLoop(_ConsumerThread):
    """Fix 10: Faust's consumer "thread" run as a service of the worker's own event loop, with no
    thread of its own. mode's `ServiceThread` makes a loop and a thread for it, and every call
    from Faust's consumer (each `getmany` included) crosses to that thread through a method queue
    and comes back through `call_soon_threadsafe`. Here the thread's loop is the worker's loop,
    `start` and `stop` do in place what the thread would do, and `call_thread` calls directly."""

    def __init__(self, consumer, *, loop, **kwargs):
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)

    async def start(self) -> None:
        assert not self._thread_started.is_set()
        self._thread_started.set()
        await self._default_start()
        await self.on_thread_started()          # the method queue: the rebalance callbacks use it

    async def stop(self) -> None:
        if self._started.is_set() and not self._stopped.is_set():
            # what the thread does once stopped (`ServiceThread._shutdown_thread`), then what the
            # parent does, which waits for it; not `_gather_remaining_tasks`: this loop is the app's
            await self.on_thread_stop()            # the method queue, then the aiokafka consumer
            await self._default_stop_children()
            await self._default_stop_futures()
            await self._default_stop_exit_stacks()
            self._shutdown.set()
            await Service.stop(self)

    async def call_thread(self, fun, *args, **kwargs):
        result = fun(*args, **kwargs)
        return (await result) if inspect.isawaitable(result) else result

    async def cast_thread(self, fun, *args, **kwargs) -> None:
        result = fun(*args, **kwargs)
        if inspect.isawaitable(result):
            self.add_future(result)


def consumer_runs_on(app, loop) -> str:
    """Where `app`'s Kafka consumer runs, seen from `loop` (the app's): "loop" (fix 10) or
    "thread" (its own, `UPSELL_CONSUMER_THREAD=1`)."""
    return "loop" if app.consumer._thread.thread_loop is loop else "thread"


class _Consumer(InboxFetch, PausedInTheClient, InPlaceWaitFirst, driver.Consumer):
    def _new_consumer_thread(self):
        cls = _ConsumerThread if self.app.consumer_thread else _ConsumerInLoop
        return cls(self, loop=self.loop, beacon=self.beacon)


async def _resume(coro, waiting_on):
    """The rest of a coroutine that was started in place and is waiting on `waiting_on` (what it
    yielded: a future, or None for a bare yield), as a coroutine of its own: mode's `wait_first`
    takes awaitables, and a generator-based coroutine (`_drive`) is not one."""
    return await _drive(coro, waiting_on)


@types.coroutine
def _drive(coro, waiting_on):
    """Yields `waiting_on` to the task that runs it, then goes on driving `coro`, passing in
    whatever the task sends or throws (a cancellation included), as `await` would have."""
    while True:
        try:
            sent = yield waiting_on
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:    # noqa: B036 -- handed on to the coroutine, as `await` does
            try:
                waiting_on = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting_on = coro.send(sent)
            except StopIteration as done:
                return done.value


class Conductor(faust.transport.conductor.Conductor):
    """Fix 8: the records of a topic an `Inbox` takes (`App.inboxes`) go to its handler, not
    through a channel's decoding and queue (see streams/inbox.py)."""

    def _build_handler(self, tp, channels):
        inbox = self.app.inboxes.get(tp.topic)
        if inbox is not None:
            return inbox.handler(tp)
        return super()._build_handler(tp, channels)


class Transport(driver.Transport):
    Consumer = _Consumer
    Conductor = Conductor


class App(faust.App):
    """`faust.App` on the aiokafka transport, with `fetch_max_wait_ms` (milliseconds), and with
    its consumer on the app's own event loop unless `consumer_thread` (fix 10)."""

    def __init__(self, *args, fetch_max_wait_ms: int = 100, consumer_thread: bool = False,
                 full_gc_interval: float = 0.0, **kwargs):
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.consumer_thread = consumer_thread
        self.full_gc_interval = full_gc_interval     # seconds between full collections; 0: Python's (fix 11)
        self.inboxes: dict = {}      # topic name -> streams.inbox.Inbox taking its records (fix 8)
        super().__init__(*args, **kwargs)
        self.task(_root_log_level)
        self.task(_freeze_startup_heap)
        self.task(_full_collections)

    def _new_transport(self):
        return Transport(self.conf.broker_consumer, self)

    def FlowControlQueue(self, maxsize=None, *, clear_on_resume=False):  # noqa: N802 -- Faust's name
        return RefillAtHalf(maxsize=maxsize, flow_control=self.flow_control, clear_on_resume=clear_on_resume)


class RefillAtHalf(ThrowableQueue):
    """Fix 6: a full buffer wakes the producer waiting to put (Faust's fetcher, for a channel)
    once it is down to half, not at every get. At every get, a worker slower than its fetcher
    had the fetcher wait once per record (fix 5's slow path: four tasks and an `asyncio.wait`
    each time); woken at half, it refills half a buffer in place per wait."""

    def _wakeup_next(self, waiters):
        if waiters is self._putters and self._maxsize > 0 and self.qsize() > self._maxsize // 2:
            return
        super()._wakeup_next(waiters)


async def _root_log_level() -> None:
    levels = [h.level for h in logging.root.handlers if type(h).__name__ != "SpinnerHandler"]
    if levels and min(levels) > logging.root.level:
        logging.root.setLevel(min(levels))


async def _freeze_startup_heap() -> None:
    """Fix 4: what start-up built (modules, Faust's and aiokafka's objects: about 94,000 tracked
    objects) is moved out of the cyclic garbage collector's reach. Every full collection walked
    all of it again: 36-56 ms each, every 5-6 s in the latency benchmark's worker, stalling every
    event in flight. Frozen, they took 3-6 ms. Garbage is collected first, so nothing dead is
    kept; objects made later are collected as before (their full collections: fix 11)."""
    gc.collect()
    gc.freeze()


NEVER = 1 << 30     # a collector threshold no count reaches


async def _full_collections(app) -> None:
    await full_collections(app.full_gc_interval)


async def full_collections(interval: float) -> None:
    """Fix 11: while it runs, the collector makes no full collection of its own, and one is made
    every `interval` seconds; with `interval` 0, nothing changes. The thresholds are restored
    when it ends (cancelled: the app stops)."""
    if interval <= 0:
        return
    young, middle, full = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)
    try:
        while True:
            await asyncio.sleep(interval)     # a period: a timer, not a wait for something
            gc.collect()
    finally:
        gc.set_threshold(young, middle, full)
