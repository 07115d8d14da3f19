"""`App`: faust.App with the adaptations the worker and the benchmark's no-op app share. Every
change to faust-streaming's, mode's and aiokafka's behaviour is here, each a named class or
function:

| name | changes | why (bench/adaptations.py: the figure with it off) |
|---|---|---|
| `FetchWait` | the consumer's fetch wait (Faust fixes 1,500 ms) to `App(fetch_max_wait_ms=...)` | a broker that holds an empty fetch for the whole wait adds it to every hop (p99 at 3,000 events/s 18x) |
| `EmbeddedBrokerEndOffsets` | with the embedded test broker (tansu) only: the end offsets Faust asks for are read from the partition's last batch | tansu reports the last batch's base offset + 1, so table recovery stopped before the last records (correctness, not speed) |
| `PausedInTheClient` | partitions Faust pauses are paused in aiokafka too | aiokafka held back every fetch while records of a paused changelog partition waited untaken (p99 at 3,000 events/s 2.7x) |
| `InboxConductor`, `InboxFetch` | a fetch's records of an inbox topic (`App.inboxes`, `streams/inbox.py`) go to the inbox as one list | Faust's per-record path cost more than the worker's own work (backlog: 0.21x the events/s, 4.9x the CPU per event) |
| `ConsumerOnAppLoop` | Faust's consumer runs on the app's event loop, not a thread of its own (`consumer_thread=False`) | a shorter latency tail under load (p99 at 27,000 events/s 1.9x) |
| `WorkerWithoutSpinner` | Faust's worker without its start-up spinner (the public `Worker` setting) | at log level warn and above the spinner sets the root logger to DEBUG for good: every debug call of aiokafka, mode and Faust built a record (23% more CPU per live event at 3,000 events/s) |

The worker's process also sets Python's garbage collector at start (`worker_process_settings`,
called by the app module, not by every App made): the start-up heap frozen
(`freeze_startup_heap`) and full collections on a timer (`full_collections`,
UPSELL_FULL_GC_INTERVAL): the timer's collections replace Python's own, and the frozen heap keeps
each of them short; together they are worth about a sixth of the backlog rate and a third of
p99 under load (bench/adaptations.py measures them).

These lean on internals of faust-streaming 0.15.3, mode-streaming 0.7.1 and aiokafka;
pyproject.toml pins the packages. `tests/test_private_names.py` checks every private
name used and fails naming the package to re-check; docs/upgrading.md says how to move a pin.
`python bench/adaptations.py` measures each one against the framework's own behaviour; the runs
are in bench/README.md.
"""
from __future__ import annotations

import asyncio
import gc
import inspect

import aiokafka
import aiokafka.protocol.metadata
import faust
import faust.transport.conductor
from faust.transport.drivers import aiokafka as driver
from mode import Service

from streams.timeslice import TimeSlice


class FetchWait(driver.AIOKafkaConsumerThread):
    """The worker consumer's fetch wait from `App.fetch_max_wait_ms`, and the embedded test
    broker's end offsets corrected (`EmbeddedBrokerEndOffsets`)."""

    _embedded: bool | None = None     # the broker is the embedded test broker (tansu)

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms   # read by consumer.start()
        return consumer

    async def _highwaters(self, partitions):
        """End offsets; with the embedded test broker, checked against the last batch."""
        ends = dict(await super()._highwaters(partitions))
        check = {tp: end for tp, end in ends.items() if end}
        if not check:
            return ends
        if self._embedded is None:
            self._embedded = await is_embedded_broker(self._ensure_consumer()._client)
        if not self._embedded:
            return ends
        return await embedded_broker_end_offsets(self, ends, check)


async def is_embedded_broker(client) -> bool:
    """Whether the cluster is the embedded test broker: tansu names its cluster "tansu_cluster"."""
    node = client.get_random_node()
    metadata = await client.send(node, aiokafka.protocol.metadata.MetadataRequest([]))
    return str(getattr(metadata, "cluster_id", "") or "").startswith("tansu")


async def embedded_broker_end_offsets(thread, ends: dict, check: dict) -> dict:
    """EmbeddedBrokerEndOffsets: tansu 0.6.0 reports a partition's end offset as its last batch's
    base offset + 1 (8 records in batches of 5 and 3: 6). Each end offset in `check` is read
    from end - 1: the batch found there gives the true end."""
    reader = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=driver.server_list(thread.transport.url, thread.transport.default_port),
        enable_auto_commit=False,
        **driver.credentials_to_aiokafka_auth(thread.app.conf.broker_credentials, thread.app.conf.ssl_context))
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


class PausedInTheClient:
    """For Faust's consumer: the partitions Faust pauses are paused in aiokafka too. Faust pauses
    by leaving a partition out of the fetches it asks for, but aiokafka goes on fetching it, and
    holds back every fetch to a broker for up to 100 ms while fetched records wait untaken."""

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
    """For Faust's consumer: each fetch's records of an inbox topic (`App.inboxes`) go to
    the inbox as a whole, not one at a time through the fetcher, the conductor and a channel;
    between partitions, the event loop gets a turn once a `TimeSlice` is spent."""

    async def _wait_next_records(self, timeout):
        records, active_partitions = await super()._wait_next_records(timeout)
        inboxes = self.app.inboxes
        if not records or not inboxes or not self.flow_active or self.should_stop:
            return records, active_partitions       # Faust's getmany does the rest (or seeks back)
        turn = TimeSlice()      # a large fetch does not hold the event loop for all its partitions
        for tp in [tp for tp in records if tp.topic in inboxes]:
            # the partitions Faust would deliver from (the rest it drops, and so does this: left in)
            if active_partitions is None or tp in active_partitions or tp in self._buffered_partitions:
                await self._to_inbox(inboxes[tp.topic], tp, records.pop(tp))
                await turn.pause()
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


class ConsumerOnAppLoop(FetchWait):
    """Faust's consumer "thread" run as a service of the worker's own event loop, with no
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
    """Where `app`'s Kafka consumer runs, seen from `loop` (the app's): "loop" or
    "thread" (its own, `UPSELL_CONSUMER_THREAD=1`)."""
    return "loop" if app.consumer._thread.thread_loop is loop else "thread"


class _Consumer(InboxFetch, PausedInTheClient, driver.Consumer):
    def _new_consumer_thread(self):
        cls = FetchWait if self.app.consumer_thread else ConsumerOnAppLoop
        return cls(self, loop=self.loop, beacon=self.beacon)


class InboxConductor(faust.transport.conductor.Conductor):
    """The records of a topic an `Inbox` takes (`App.inboxes`) go to its handler, not
    through a channel's decoding and queue (see streams/inbox.py)."""

    def _build_handler(self, tp, channels):
        inbox = self.app.inboxes.get(tp.topic)
        if inbox is not None:
            return inbox.handler(tp)
        return super()._build_handler(tp, channels)


class Transport(driver.Transport):
    Consumer = _Consumer
    Conductor = InboxConductor


class WorkerWithoutSpinner(faust.Worker):
    """Faust's worker without the terminal spinner it shows during start-up. At log level warn
    and above Faust adds a spinner handler listening at DEBUG and lowers the root logger to DEBUG
    for the life of the process, so every `log.debug` call of aiokafka, mode and Faust (several
    per fetch and per send) builds a record that is then dropped. Without the spinner the root
    logger stays at the level the worker was started with; start-up says "Ready" in the log."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.spinner = None


class App(faust.App):
    """`faust.App` on the aiokafka transport, with `fetch_max_wait_ms` (milliseconds), and with
    its consumer on the app's own event loop unless `consumer_thread`."""

    def __init__(self, *args, fetch_max_wait_ms: int = 100, consumer_thread: bool = False,
                 full_gc_interval: float = 0.0, **kwargs):
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.consumer_thread = consumer_thread
        self.full_gc_interval = full_gc_interval     # seconds between full collections; 0: Python's
        self.inboxes: dict = {}      # topic name -> streams.inbox.Inbox taking its records
        self.ingest = None           # the worker's ingest (agents.ingest.Ingest), once declared
        self.readmodel = None        # the worker's read model (agents.readmodel.ReadModel), while it runs
        kwargs.setdefault("Worker", WorkerWithoutSpinner)
        super().__init__(*args, **kwargs)

    def worker_process_settings(self) -> None:
        """The garbage collector's settings of a worker process, made once it runs: the start-up
        heap frozen, full collections on a timer. Called by the app module of a worker
        (`streams.app`, the benchmark's no-op app), not by every App made."""
        self.task(freeze_startup_heap)
        self.task(_full_collections)

    def _new_transport(self):
        return Transport(self.conf.broker_consumer, self)


async def freeze_startup_heap() -> None:
    """What start-up built (modules, Faust's and aiokafka's objects: about 94,000 tracked
    objects) is moved out of the cyclic garbage collector's reach, so a full collection does not
    walk it again (tens of milliseconds each, stalling every event in flight). Garbage is
    collected first, so nothing dead is kept; objects made later are collected as before."""
    gc.collect()
    gc.freeze()


NEVER = 1 << 30     # a collector threshold no count reaches


async def _full_collections(app) -> None:
    await full_collections(app.full_gc_interval)


async def full_collections(interval: float) -> None:
    """While it runs, the collector makes no full collection of its own (under load one came every
    few seconds, each stalling the events in flight and walking every customer), and one is made
    every `interval` seconds; with `interval` 0, nothing changes. The thresholds are restored when
    it ends (the app stops)."""
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
