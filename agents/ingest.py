"""The ingest: decode -> update state -> rules -> emit, for every input topic.

`Ingest` is the worker's ingest (`app.ingest`): the partitions it owns, each a `PartitionRuntime`
(its `PartitionEngine`, the records held for stream time, the acknowledgement order of its
topic-partitions, the write-behind counters, the decision partitions it sent to), made on a
partition's first record or batch end and dropped on revocation; the inbox its input records
come through; live, its local clock. The Faust tasks and the timer below only hand their work
to it.
`tests/ingest_driver.py` drives one record by record.

Input records come from Faust's consumer through an inbox (`streams.inbox`): each fetch's
records in one list, to one task (`ingest`), outside Faust's per-record path, which cost a no-op
Faust agent more per record than the rules and state cost this worker. All decisions are made by
`rules.engine.PartitionEngine` (pure, shared with the backtest); this module moves bytes:

* decode and validate (`streams.recorded.decode_event`); anything invalid goes to `dead-letters`
  with the reason (`agents.errors`), and the stream moves on (its offset is committed like any
  other). A record on a partition its key does not hash to is forwarded to the `repartition`
  topic (`forward`) or dead-lettered (UPSELL_WRONG_PARTITION);
* feed the partition's engine; send its proposals and suppressions at once, keyed by
  customer_id, as record batches (`emit`, `streams.topics.WRITES`);
* write behind: the table is written once per batch of records on a partition, not once per
  event. A batch ends after PERSIST_EVERY records; live, also once per commit interval on a
  local timer (`batch_ends`: no broker hop, no topic); with the event clock, when the consumer
  knows of no later record on the event's topic-partition;
* a batch end waits while Faust's producer buffer holds more than PRODUCER_BACKLOG messages
  (`ebb`), or more than UNSENT_BYTES of table writes and decisions are not yet in the broker;
* live, stream time moves on a local clock (`Ingest.advance`, `Ingest.clock`), without a broker hop, as soon
  as a waiting event falls due: released events are applied and decided at once, and written at
  the batch end;
* acknowledge an input event only once the engine has applied it and the broker has its
  decisions and its batch's writes (a watermark record: once a partition document holds it), in
  offset order per topic-partition (`InOrder`). Events waiting for stream time stay
  unacknowledged, so Kafka's committed offset never passes them: a worker that dies loses
  nothing, and the next owner of the partition reads them again. Re-read events whose effects
  were written are recognised by offset and dropped by the engine; the others are applied again
  and their decisions sent again, with the same proposal_id (at least once).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque

import orjson

from rules.engine import PROPOSAL, STATUS, PartitionEngine
from rules.timeutil import parse_ts
from schemas.validate import ValidationError, check_event_time
from agents.errors import send_dead_letter
from streams import metrics
from streams.backtest import ahead_error
from streams import topics as T
from streams.app import app, health, rules, settings
from streams.clock import WALL, LocalClock
from streams.inbox import Inbox, writing_for
from streams.partitioning import partition_for, wrong_partition_error
from streams.recorded import decode_event, dumps
from streams.replay import WATERMARK_HEADER

log = logging.getLogger(__name__)
PERSIST_EVERY = 1000    # records on a partition between table writes, at most
META_EVERY = 1000       # records between writes of the partition document (at a batch end)
PRODUCER_BACKLOG = 10_000   # messages in Faust's producer buffer beyond which a batch end waits (`ebb`)
UNSENT_BYTES = settings.max_unsent_mb << 20   # bytes not yet in the broker beyond which a batch end waits
# The topic whose partition p a write of partition p's state stands for (tables are written for a
# current event; its partition count is checked against the changelog's)
STATE_SOURCE = T.inputs["usage"].get_topic_name()
TOPIC_HEADER = "upsell-topic"         # a forwarded record's input topic
SOURCE_HEADER = "upsell-source"       # "partition:offset" it was read from
MARK_HEADER = "upsell-forward-mark"   # "partition:ts": that partition forwards nothing older than ts
FORWARD = settings.wrong_partition == "repartition"
# With the event clock, stream time waits for the other partitions' forward marks; live, the
# wall clock moves it, and a forwarded record arrives well within UPSELL_LATENESS_MS.
FORWARD_MARKS = FORWARD and settings.clock == "event"
LIVE = settings.clock == "wall"      # stream time from the wall clock (else from the events)


class InOrder:
    """Acknowledges one topic-partition's records to Faust in offset order, each once it and
    every record read before it are done. Faust commits the end of the first run of consecutive
    acknowledged offsets, and checks that the run starts at the committed offset only loosely
    (not at all before a first commit or after a commit of 0, and it lets one offset pass):
    acknowledged out of order, a dead letter read after an event still waiting for stream time
    could commit past that event, and a worker that died then would never see it again.
    Upstream: faust-streaming issue #606 and pull request #707 (open), `Consumer._new_offset`."""

    __slots__ = ("generation", "queue", "done", "dropped")

    def __init__(self, generation):
        self.generation = generation      # the consumer generation of its records
        self.dropped = False              # its partition was revoked, or a rebalance began a new generation
        self.queue: deque = deque()       # records read, in offset order, not yet acknowledged
        self.done: set[int] = set()       # offsets done, waiting for an earlier record

    def read(self, message) -> None:
        self.queue.append(message)

    def ack(self, message) -> None:
        queue, done = self.queue, self.done
        done.add(message.offset)
        while queue and queue[0].offset in done:
            first = queue.popleft()
            if not queue or queue[0].offset != first.offset:   # read once more
                done.discard(first.offset)
            app.consumer.ack(first)          # what `first.ack(consumer)` comes to: one reference


class PartitionRuntime:
    """Everything this worker keeps for one partition it owns: its `PartitionEngine` (customers,
    events waiting for stream time, timers), the records read and not yet acknowledged, the
    acknowledgement order of each of its topic-partitions, the write-behind counters and the
    decision partitions it sent to. Made on the partition's first record after an assignment
    (the engine restored from the table), dropped when the partition is revoked: what it held
    and had not acknowledged is read again by the partition's next owner."""

    __slots__ = ("partition", "engine", "held", "marks", "decided", "unwritten", "since_meta",
                 "acks", "ends", "log_ends", "forward_mark")

    def __init__(self, partition: int, engine: PartitionEngine):
        self.partition = partition
        self.engine = engine
        self.held: dict[tuple[str, int], object] = {}   # (topic, offset) -> a record waiting in the engine
        self.marks: list = []          # watermark records read since the last partition document
        self.decided: set = set()      # (topic, partition)s this partition sent decisions and forwards to
        self.unwritten = 0             # records since the last table write
        self.since_meta = 0            # records since the last partition document
        self.acks: dict = {}           # topic-partition -> InOrder of the current assignment
        self.ends: dict = {}           # topic-partition -> the highest end offset seen (they only grow)
        self.log_ends: dict = {}       # topic-partition -> (end offset reported by fetches, exact end)
        self.forward_mark = -1         # the latest forward mark sent (event clock)

    def acks_for(self, msg) -> InOrder:
        order = self.acks.get(msg.tp)
        if order is None or order.generation != msg.generation_id:
            if order is not None:
                order.dropped = True
            order = self.acks[msg.tp] = InOrder(msg.generation_id)
        return order

    def drop(self) -> None:
        """Revoked: nothing it read is acknowledged any more (the next owner reads it again)."""
        for order in self.acks.values():
            order.dropped = True

    def batch_end(self, idle: bool) -> int | None:
        """Count a record read; if the batch ends now (see the module doc), the number of records
        in the batch, else None."""
        self.unwritten += 1
        if idle or self.unwritten >= PERSIST_EVERY:
            n, self.unwritten = self.unwritten, 0
            return n
        return None

    def persist(self, records: int) -> list:
        """End the batch: write the customers that changed, and every META_EVERY records the
        partition document (watermarks and counters) after them; returns the records to
        acknowledge now: the events applied, and the watermark records read once a partition
        document holds them. Synchronous, so nothing else runs meanwhile; the writes go to
        partition p of the changelog, as one `write_many` (record batches, not a message per key)."""
        eng, p = self.engine, self.partition
        blobs, items = {}, []
        for cid, c in eng.take_dirty():
            blob = blobs[cid] = dumps(c)
            items.append((cid.encode(), blob))
        eng.written(blobs)      # customers idle since the batch before are kept as these bytes
        held = self.held
        done = [e for e in (held.pop(key, None) for key in eng.take_applied()) if e is not None]
        self.since_meta += records
        if self.since_meta >= META_EVERY:
            items.append((meta_key(p), dumps(eng.meta())))
            self.since_meta = 0
            done += self.marks
            self.marks = []
        with writing_for(STATE_SOURCE, p):     # a table writes to its current event's partition
            T.customer_state.write_many(p, items)
        return done

    def sent(self) -> list:
        """The latest state write of the partition and the latest send to each topic-partition it
        sent decisions or forwards to: once they are in the broker, so is everything it wrote and
        sent before (`streams.topics.Batches`). Empty in the agents' test driver."""
        writes = [T.WRITES.last[tp] for tp in self.decided]
        state = T.customer_state.last_write.get(self.partition)
        return writes + [state] if state is not None else writes

    def ack(self, messages) -> None:
        """Acknowledge these records now, each in its topic-partition's order."""
        for m in messages:
            order = self.acks.get(m.tp)
            if order is not None:
                order.ack(m)


class Partitions:
    """The partitions this worker owns, each a `PartitionRuntime`."""

    def __init__(self):
        self.runtimes: dict[int, PartitionRuntime] = {}

    def __getitem__(self, partition: int) -> PartitionRuntime:
        rt = self.runtimes.get(partition)
        if rt is None:
            rt = self.runtimes[partition] = PartitionRuntime(partition, restore(partition))
        return rt

    def engines(self) -> dict[int, PartitionEngine]:
        return {p: rt.engine for p, rt in self.runtimes.items()}

    def revoke(self, tps) -> None:
        """The tables stay the source of truth; a runtime is made again on its next record, and
        its records not acknowledged are read again by the partition's next owner."""
        for tp in tps:
            rt = self.runtimes.pop(tp.partition, None)
            if rt is not None:
                rt.drop()

    def clear(self) -> None:
        """Every partition revoked (a rebalance that takes them all, or a stop)."""
        for rt in self.runtimes.values():
            rt.drop()
        self.runtimes.clear()


def meta_key(partition: int) -> bytes:
    """The key of a partition's document (watermarks, counters) in the customer-state table.
    It is not UTF-8, so no customer id has it. Kept with the customers, the document goes to
    their changelog partition, after the customers of its batch: Kafka keeps one partition's
    writes in order, so a worker that dies mid-batch leaves its successor a prefix of them, and
    the restored document is never ahead of the restored customers. (In a table of its own, the
    document could land while customers written before it were lost; re-read events would then
    count as late and be applied out of time order.)"""
    return b"\xffpartition:%d" % partition


def restore(partition: int) -> PartitionEngine:
    """The partition's engine, rebuilt from the table after an assignment."""
    # partition-state: where earlier versions kept the document (read until it is rewritten)
    meta = T.customer_state.get(meta_key(partition)) or T.partition_state.get(str(partition).encode())
    table = T.customer_state
    keys = [k for k in table.keys_of(partition, _hashed) if k[:1] != b"\xff"]
    misplaced = sum(partition_for(k.decode("utf-8", "replace"), settings.partitions) != partition
                    for k in keys)
    if misplaced:
        # kept where they are: dropping them would lose those customers' state
        metrics.misplaced_customers[partition] = misplaced
        log.warning("partition %d: %d customer document(s) in its changelog partition hash (murmur2) to "
                    "another partition; restored here, as written", partition, misplaced)
    return PartitionEngine.restore(     # JSON: restored frozen
        rules, partition, orjson.loads(meta) if meta else None, (table[k] for k in keys),
        max_ahead=settings.max_ahead_ms, forward_sources=settings.partitions if FORWARD_MARKS else None)


def _hashed(key: bytes) -> int:
    """The partition a table key hashes to; a partition document's own key names its partition."""
    if key[:1] == b"\xff":
        return int(key.rsplit(b":", 1)[1])
    return partition_for(key.decode("utf-8", "replace"), settings.partitions)


async def settle(rt: PartitionRuntime, out: list, ended: int | None) -> None:
    """Send the decisions; if the partition's batch ended (`ended` records, from `batch_end`),
    first write what changed, then acknowledge the records written once the broker has the
    writes and the decisions sent so far. The write comes first, in the same step as the
    engine's change: after an await the partition may have been revoked (Faust does not wait for
    agents, `stream_wait_empty=False`), and a write then would put a dropped engine's state in
    the table under its successor."""
    if ended is None:
        if out:
            await emit(rt, out)
        return
    if FORWARD_MARKS:
        await send_forward_marks(rt)
    done = [(rt.acks.get(m.tp), m) for m in rt.persist(ended)]
    if out:
        await emit(rt, out)
    if done:
        ack_when_written(done, rt.sent())
    await ebb(app.producer.buffer)
    await T.WRITES.drain(UNSENT_BYTES)


async def ebb(buffer, high: int = PRODUCER_BACKLOG) -> None:
    """Once more than `high` messages (decisions, dead letters) wait in Faust's producer buffer,
    wait until it is down to half. A batch end can hand it thousands of decisions at once (a
    watermark releasing every held event of a partition); Faust's own check before each record
    (`wait_until_ebb`) sends 100 of them and lets the stream go on, so they piled up (99,000
    seen, when table writes still went through it) and so did the memory. Table writes and
    decisions have their own limit (`streams.topics.Batches.drain`).
    Stopping the stream here stops the fetcher too, once the buffers fill: backpressure."""
    while buffer.size > high and buffer.state == "running":
        try:
            await buffer.flush_atmost(buffer.size - high // 2)
        except RuntimeError:        # "Producer not Running": it stopped meanwhile (shutting down)
            return


def ack_when_written(events: list, writes: list) -> None:
    """Acknowledge the events ((InOrder, message) pairs) once every future of `writes` is done:
    the partition's latest state write and decision sends (`PartitionRuntime.sent`), each of which stands for
    every earlier one of its topic-partition. Earlier is not safe: Faust's commit flushes its
    own producer buffer, then aiokafka's producer, which does not hold the sends still on their
    way to it, and commits anyway. A worker that died then would leave its successor committed
    offsets past events whose state or decisions it never gets."""
    if not writes or app.producer.buffer.state != "running":   # no producer: the test driver
        _ack(events)
        return
    pending = [w for w in writes if not w.done()]
    if not pending:
        _delivered(events, writes)
        return
    left = [len(pending)]

    def one_done(_) -> None:
        left[0] -= 1
        if not left[0]:
            _delivered(events, writes)

    for w in pending:
        w.add_done_callback(one_done)


def _delivered(events: list, writes: list) -> None:
    failed = next((w for w in writes if w.cancelled() or w.exception() is not None), None)
    if failed is not None:
        # left unacknowledged: Kafka's committed offset stops before them, and a restart reads
        # them again; a worker whose state or decisions cannot be written should stop
        exc = RuntimeError("write cancelled") if failed.cancelled() else failed.exception()
        if app.should_stop:
            log.info("a write did not land while the worker stops (%s): its events are not "
                     "acknowledged, so the partition's next owner reads them again", exc)
            return
        log.error("a state write or decision send failed (%s): stopping; its events are not "
                  "acknowledged", exc)
        asyncio.ensure_future(app.crash(exc))
        return
    _ack(events)


def _ack(events: list) -> None:
    for order, message in events:
        if order is not None and not order.dropped:
            order.ack(message)


async def emit(rt: PartitionRuntime, out: list) -> None:
    """Send the partition's decisions and lifecycle records, keyed by customer_id to the partition Kafka's default
    partitioner gives the key (as Faust's `send` did): as record batches, one send per
    topic-partition (`streams.topics.WRITES`), whose futures `PartitionRuntime.sent` hands to the
    acknowledgements. Without a running producer (the agents' test driver), Faust's `send`."""
    producer = T.Batches.producer(app)
    groups: dict[tuple[str, int], list] = {}
    clock = app.ingest.clock
    now = clock.clock.now_ms() if clock is not None else None     # live: decision latency
    for kind, p in out:
        if kind == STATUS:
            metrics.count_status(p)
            topic = T.status
        else:
            if now is not None:
                metrics.observe_latency(p["trigger"], now - parse_ts(p["created_at"]))
            if kind == PROPOSAL:
                metrics.proposals_out[p["trigger"]] += 1
                topic = T.proposals
            else:
                metrics.suppressed_out[(p["trigger"], p["suppressed"]["reason"])] += 1
                topic = T.suppressed
        key, value = p["customer_id"].encode(), orjson.dumps(p)
        if producer is None:
            await topic.send(key=key, value=value)
            continue
        tp = (topic.get_topic_name(), partition_for(p["customer_id"], settings.partitions))
        groups.setdefault(tp, []).append((key, value))
    if groups:
        rt.decided.update(groups)
        for (topic_name, q), items in groups.items():
            T.WRITES.send(producer, topic_name, q, items)


def _header(msg, name: str) -> bytes | None:
    for k, v in (msg.headers.items() if isinstance(msg.headers, dict) else (msg.headers or ())):
        if k == name:
            return v
    return None


def caught_up(rt: PartitionRuntime, msg) -> bool:
    """With the event clock: no later record of the message's topic-partition is known to the
    consumer (or it cannot tell: no consumer running, as under the test driver). Live, the
    batch-end timer ends the batches instead: this is False. Below an end offset already seen,
    the answer is known without asking the consumer (on a backlog, nearly every record)."""
    if settings.clock == "wall":      # read at each call: tests switch clocks
        return False
    end = rt.ends.get(msg.tp)
    if end is not None and msg.offset + 1 < end:
        return False
    try:
        hw = app.consumer.highwater(msg.tp)
    except Exception:       # ConsumerNotStarted and the like
        return True
    if hw is None:
        return True
    rt.ends[msg.tp] = hw
    return msg.offset + 1 >= hw


def decode_record(topic: str, msg) -> tuple[int, str, dict]:
    """An input record's event time (ms), key and validated value; raises if it is a dead letter."""
    ts = int(round(msg.timestamp * 1000))
    check_event_time(ts)
    if msg.value is None:
        raise ValidationError(None, "empty record (tombstone); expected a JSON object")
    key = msg.key.decode("utf-8") if msg.key is not None else None
    return ts, key, decode_event(topic, key, msg.value, rules.plan_by_name)


async def drop_ahead(rt: PartitionRuntime) -> None:
    """Dead letters for the events the engine dropped as far ahead of a later record on their
    topic-partition (`rules.engine`), each acknowledged once its dead letter is sent."""
    held = rt.held
    for topic, offset, ts, later in rt.engine.take_rejected():
        msg = held.pop((topic, offset), None)
        if msg is None:
            continue
        metrics.far_ahead[topic] += 1
        await send_dead_letter(topic, msg, ts, ValidationError(None, ahead_error(ts, later)))
        _ack([(rt.acks.get(msg.tp), msg)])


async def check_log(rt: PartitionRuntime, msg, topic: str, applied: int) -> bool:
    """A record at or below an offset the customer's state has applied: a record read again (after
    a restart or a take-over), unless the topic-partition's log now ends at or below that offset
    (topic re-created or truncated, broker data lost), when its offsets name other records.
    That is logged as an ERROR and reported in `/health` and `upsell_offset_regressions_total`;
    then UPSELL_OFFSETS_BACKWARDS=stop stops the worker, and =reapply forgets the partition's
    applied offsets of the topic so that the new log's records are applied. False: stopping."""
    try:
        end = app.consumer.highwater(msg.tp)
    except Exception:       # noqa: BLE001 -- no consumer (the test driver): nothing to compare with
        return True
    if end is None or applied < end:
        return True
    reported, exact = rt.log_ends.get(msg.tp, (None, None))
    if reported != end:      # the reported end can be short (the embedded broker's): ask once
        try:
            exact = (await app.consumer.highwaters(msg.tp)).get(msg.tp, end)
        except Exception as exc:    # noqa: BLE001 -- cannot tell now: a record read again, as before
            log.warning("%s/%d: could not read the log's end offset (%s)", msg.tp.topic, msg.partition,
                        type(exc).__name__)
            return True
        rt.log_ends[msg.tp] = (end, exact)
    end = exact
    if applied < end:
        return True
    metrics.offset_regressions[(topic, msg.partition)] += 1
    action = settings.offsets_backwards
    health.offsets_went_back(topic, msg.partition, applied, end, action)
    text = (f"{msg.tp.topic}/{msg.partition}: the log ends at offset {end}, but this partition's state has "
            f"applied offset {applied}: the topic was re-created or truncated, or the broker lost its data")
    if action == "stop":
        log.error("%s. Stopping (UPSELL_OFFSETS_BACKWARDS=stop); to apply the new log's records, "
                  "start with UPSELL_OFFSETS_BACKWARDS=reapply", text)
        await app.crash(RuntimeError(text))
        return False
    n = rt.engine.forget_offsets(topic)
    log.error("%s. Applying its records again (UPSELL_OFFSETS_BACKWARDS=reapply): %d customers' offsets "
              "of %s forgotten", text, n, topic)
    return True


def check_partition(topic: str, key: str, partition: int, partitions: int, warned: set) -> int | None:
    """A record must be applied on the partition its key hashes to (murmur2, Kafka's default
    partitioner): a customer's state lives on one partition, and an event applied elsewhere would
    start a second, wrong state. Returns None when the record is there; else the partition to
    forward it to (UPSELL_WRONG_PARTITION=repartition), or raises: a dead letter (=dead-letter).
    Counted per topic; the first one per topic logs which producer setting to change."""
    expected = partition_for(key, partitions)
    if expected == partition:
        return None
    metrics.wrong_partition[topic] += 1
    if topic not in warned:
        warned.add(topic)
        log.warning("%s: a record keyed %r is on partition %d, but its key hashes to %d (murmur2). Its "
                    "producer uses another partitioner: set murmur2 (librdkafka, confluent-kafka: "
                    "partitioner=murmur2_random; Sarama: NewMurmur2Partitioner). Such records are %s, "
                    "counted in upsell_wrong_partition_total", topic, key[:40], partition, expected,
                    "forwarded through the repartition topic" if FORWARD else "dead letters")
    if FORWARD:
        return expected
    raise ValidationError(None, wrong_partition_error(partition, expected, partitions))


async def forward(rt: PartitionRuntime, msg, order: InOrder, topic: str, ts: int, partition: int) -> None:
    """Send an input record to the repartition topic's partition its key hashes to, key, value
    and timestamp unchanged, with its topic and origin in headers; acknowledged once it is in
    the broker. Sent in order with the source partition's forward marks (`send_forward_marks`)."""
    headers = [(TOPIC_HEADER, topic.encode()), (SOURCE_HEADER, b"%d:%d" % (msg.partition, msg.offset))]
    producer = T.Batches.producer(app)
    if producer is None:        # the agents' test driver
        await T.repartition.send(key=msg.key, value=msg.value, partition=partition, timestamp=ts / 1000,
                                 headers=headers)
        _ack([(order, msg)])
        return
    name = T.repartition.get_topic_name()
    sent = T.WRITES.send(producer, name, partition, [], [(msg.key, msg.value, ts, headers)])
    rt.decided.add((name, partition))
    ack_when_written([(order, msg)], [sent])


async def send_forward_marks(rt: PartitionRuntime) -> None:
    """With the event clock: tell every other partition that this one forwards no record older
    than the lowest high-water mark of its input topics (records of a topic-partition come in
    time order), when that moved. Sent with the batch's writes, so its records' acknowledgements
    wait for them."""
    hws = rt.engine.hw.values()
    if None in hws:
        return
    at, p = min(hws), rt.partition
    if at <= rt.forward_mark:
        return
    rt.forward_mark = at
    headers = [(MARK_HEADER, b"%d:%d" % (p, at))]
    producer = T.Batches.producer(app)
    name = T.repartition.get_topic_name()
    for q in range(settings.partitions):
        if q == p:
            continue
        if producer is None:
            await T.repartition.send(key=None, value=b"", partition=q, timestamp=at / 1000, headers=headers)
            continue
        T.WRITES.send(producer, name, q, [], [(None, b"", at, headers)])
        rt.decided.add((name, q))


async def handle_forwarded(rt: PartitionRuntime, msg, order: InOrder, clock: LocalClock | None) -> None:
    """A record of the repartition topic: a forwarded input record, or a forward mark."""
    eng = rt.engine
    mark = _header(msg, MARK_HEADER)
    try:
        if mark is not None:
            source, at = _pair(mark, MARK_HEADER)
            check_event_time(at)
        else:
            origin = _header(msg, TOPIC_HEADER)
            topic = origin.decode() if origin is not None else None
            if topic not in T.inputs:
                raise ValidationError(None, f"repartition record without a known {TOPIC_HEADER} header")
            source, source_offset = _pair(_header(msg, SOURCE_HEADER) or b"", SOURCE_HEADER)
            ts, key, value = decode_record(topic, msg)
            if partition_for(key, settings.partitions) != msg.partition:
                raise ValidationError(None, wrong_partition_error(msg.partition, partition_for(
                    key, settings.partitions), settings.partitions))
    except Exception as exc:      # noqa: BLE001 -- any bytes: a dead letter, never a stopped worker
        ts = int(round(msg.timestamp * 1000)) if msg.timestamp is not None else None
        await send_dead_letter("repartition", msg, ts, exc)
        _ack([(order, msg)])
        return
    if mark is not None:
        rt.marks.append(msg)     # acknowledged as a watermark record
        out = eng.mark_forwarded(source, at)
    else:
        rt.held[("repartition", msg.offset)] = msg
        out = eng.push_forwarded(topic, key, ts, value, source, source_offset, msg.offset)
        if clock is not None and ("repartition", msg.offset) in eng.pending:
            clock.expect(ts)
    ended = rt.batch_end(caught_up(rt, msg))
    if out or ended is not None:
        await settle(rt, out, ended)


def _pair(header: bytes, name: str) -> tuple[int, int]:
    try:
        a, b = header.split(b":")
        return int(a), int(b)
    except ValueError:
        raise ValidationError(None, f"{name} header {header[:40]!r}: expected two whole numbers "
                                    "'a:b'") from None


def _marker_time(header: bytes) -> int:
    """The event time a watermark record (`upsell replay`) carries; checked like an event's."""
    try:
        at = int(header)
    except ValueError:
        raise ValidationError(None, f"watermark record: {WATERMARK_HEADER} header {header[:40]!r} is not "
                                    "epoch milliseconds") from None
    check_event_time(at)
    return at


class Ingest:
    """This worker's ingest: the partitions it owns (`Partitions`), the inbox its input records
    come through (`streams.inbox.Inbox`), live its local clock (`streams.clock.LocalClock`, else
    None), and the order in which the batch-end timer visits the partitions. The worker's is
    `app.ingest`, made when this module is imported (the inbox subscribes to its topics before
    the consumer starts); a test makes its own."""

    def __init__(self, inbox: Inbox, clock: LocalClock | None, partitions: int):
        self.inbox = inbox
        self.clock = clock
        self.partitions = Partitions()
        self.warned: set[str] = set()      # input topics whose first wrong-partition record was logged
        self.batch_order = itertools.cycle(range(partitions))

    async def run(self) -> None:
        await self.inbox.run(self.handle)

    async def deliver(self, messages: list) -> None:
        """Hand records to `handle` as a fetch would (the inbox's bookkeeping, then in order)."""
        await self.inbox.deliver(messages, self.handle)

    async def handle(self, msg) -> None:
        """One input record (a Faust consumer message, from the inbox)."""
        topic = self.inbox.names[msg.topic]
        metrics.read_offsets[(topic, msg.partition)] = msg.offset
        rt = self.partitions[msg.partition]
        order = rt.acks_for(msg)
        order.read(msg)
        eng = rt.engine
        if topic == "repartition":
            await handle_forwarded(rt, msg, order, self.clock)
            return
        marker = _header(msg, WATERMARK_HEADER)
        forward_to = None
        try:
            if marker is not None:
                at = _marker_time(marker)
            else:
                metrics.events_in[topic] += 1
                ts, key, value = decode_record(topic, msg)
                if key not in eng.customers:      # a known customer was checked on its first event
                    forward_to = check_partition(topic, key, msg.partition, settings.partitions, self.warned)
                else:
                    applied = eng.applied_offset(key, topic)
                    if applied >= msg.offset and not await check_log(rt, msg, topic, applied):
                        return          # stopping: neither applied nor acknowledged
        except Exception as exc:      # noqa: BLE001 -- any bytes: a dead letter, never a stopped worker
            ts = int(round(msg.timestamp * 1000)) if msg.timestamp is not None else None   # Faust's: s
            await send_dead_letter(topic, msg, ts, exc)
            _ack([(order, msg)])
            return
        if forward_to is not None:
            await forward(rt, msg, order, topic, ts, forward_to)
            out = ()
        elif marker is not None:
            # acknowledged once a partition document holds the watermark it raised: acknowledged
            # before, a worker that died first would leave its successor waiting for it for good
            rt.marks.append(msg)
            out = eng.mark(topic, at)
        else:
            late = eng.stats["late_events"]
            rt.held[(topic, msg.offset)] = msg
            out = eng.push(topic, key, ts, value, msg.offset)
            if eng.stats["late_events"] != late:
                metrics.late_events[topic] += 1
            if eng.rejected:
                await drop_ahead(rt)
            if self.clock is not None and (topic, msg.offset) in eng.pending:
                self.clock.expect(ts)                 # it waits for stream time: the clock wakes for it
        ended = rt.batch_end(caught_up(rt, msg))
        if out or ended is not None:        # most records: nothing to send, the batch goes on
            await settle(rt, out, ended)

    async def end_batch(self, partition: int, at: int) -> None:
        """Stream time to `at` on the partition, and the end of its write-behind batch: what
        changed is written, and what was written is acknowledged. A partition with no runtime
        yet gets one (restored from the table), so its timers fire without a record of its own."""
        rt = self.partitions[partition]
        await settle(rt, rt.engine.tick(at), rt.batch_end(True))

    async def end_next_batch(self, owned: set[int], now_ms: int) -> None:
        """The batch-end timer's step: the next partition in turn, if this worker owns it
        (`owned`), ends its batch at stream time `now_ms` minus the lateness."""
        partition = next(self.batch_order)
        if partition in owned:
            await self.end_batch(partition, now_ms - settings.lateness_ms)

    async def advance(self, now_ms: int) -> None:
        """Live stream time on this worker: each partition engine it holds moves to the wall
        clock minus the allowed lateness. The events this releases are applied and their
        decisions sent at once; their state is written, and they are acknowledged, at the
        partition's next batch end (write-behind: a move of the clock writes
        nothing). The local clock calls it each tick interval and when an event falls due.
        After each partition that sent decisions, the event loop runs its other work (sends,
        fetches): a move that releases a burst of events on every partition would otherwise hold
        the loop until all of them are applied, and the first decisions would wait for the last."""
        at = now_ms - settings.lateness_ms
        runtimes = self.partitions.runtimes
        for rt in list(runtimes.values()):
            if runtimes.get(rt.partition) is not rt:
                continue            # revoked meanwhile: its next owner decides its events
            out = rt.engine.tick(at)
            if out:
                await emit(rt, out)
                await asyncio.sleep(0)

    def waiting(self) -> list:
        """The earliest event time waiting in each partition engine (what the local clock wakes for)."""
        return [rt.engine.next_due() for rt in self.partitions.runtimes.values()]


# The worker's ingest. Its inbox takes the input topics' records from Faust's consumer in batches,
# without an Event and a stream each (streams/inbox.py): that path cost Faust twice as much per
# record as the rest. Live, stream time moves on its local clock each UPSELL_TICK_INTERVAL and
# whenever a waiting event or timer falls due, at most once per UPSELL_CLOCK_RESOLUTION_MS.
app.ingest = Ingest(
    Inbox(app, {**T.inputs, "repartition": T.repartition}),
    LocalClock(WALL, settings.lateness_ms, round(settings.tick_interval * 1000), settings.clock_resolution_ms)
    if LIVE else None,
    settings.partitions)


@app.task
async def ingest():
    """Every worker: each input record in the order fetched (acknowledged once applied and written)."""
    await app.ingest.run()


if LIVE:
    @app.task
    async def clock():
        """Every worker: move stream time when the local clock says."""
        worker = app.ingest
        await worker.clock.run(worker.advance, worker.waiting)

    @app.timer(interval=settings.commit_interval / settings.partitions, name="batch_ends")
    async def batch_ends():
        """Every worker: each of its partitions ends its batch once per UPSELL_COMMIT_INTERVAL,
        one partition at a time, so the writes are spread over the interval rather than stalling
        the worker once a second. Not while a rebalance has flow suspended: a partition's table
        is then being restored."""
        if app.flow_control.is_active():
            await app.ingest.end_next_batch(owned_partitions(), WALL.now_ms())


def owned_partitions() -> set[int]:
    """The partitions this worker's consumer has of the input topics."""
    try:
        tps = app.consumer.assignment()
    except Exception:      # noqa: BLE001 -- the consumer is not started yet
        return set()
    return {tp.partition for tp in tps if tp.topic == STATE_SOURCE}


@app.on_partitions_revoked.connect
async def _revoked(sender, revoked, **kwargs) -> None:
    app.ingest.partitions.revoke(revoked)
