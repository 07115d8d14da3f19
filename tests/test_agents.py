"""The Faust agents through `agent.test_context()`: explicit partitions and timestamps,
tables on the memory store, and the output topics replaced by in-memory Faust channels
so what the agents send can be read back."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson
import pytest

import agents.ingest as A
from faust.types import Message
from rules.engine import INPUT_TOPICS
from rules.timeutil import format_ts, parse_ts
from streams.deadletters import original_bytes
from streams import topics as T
from streams.app import app, settings
from streams.partitioning import partition_for

T0 = parse_ts("2025-06-10T09:00:00Z")   # outside every seasonal campaign
MIN = 60_000


@pytest.fixture
async def wired(monkeypatch):
    """Fresh engines and tables; proposals, suppressions and dead letters into channels."""
    out = {}
    for name in ("proposals", "suppressed", "status", "dead_letters"):
        channel = app.channel(maxsize=1000)
        monkeypatch.setattr(T, name, channel)
        out[name] = channel.clone(is_iterator=True)    # a subscriber: it receives what is sent
    monkeypatch.setattr(app, "ingest", A.Ingest(app.ingest.inbox, None, settings.partitions))
    app.flow_control.resume()      # as after an assignment: the inbox hands records on
    for table in (T.customer_state, T.partition_state):
        table.data.clear()
    T.customer_state.partition_of.clear()
    yield {topic: Input(topic) for topic in INPUT_TOPICS}, out


class Input:
    """An input topic as the worker's inbox hands it records (`Ingest.deliver`): the test
    driver's `put` is the same as an agent test context's (explicit partition and timestamp)."""

    def __init__(self, topic: str):
        self.name = (T.inputs[topic] if topic in T.inputs else getattr(T, topic)).get_topic_name()
        self.sent_offset = 0

    async def put(self, value=None, key=None, partition=0, timestamp=None, headers=None) -> Message:
        message = Message(self.name, partition, self.sent_offset, timestamp, 0, headers, key, value, None,
                          generation_id=app.consumer_generation_id)
        self.sent_offset += 1
        await app.ingest.deliver([message])
        return message


async def _put(agents, topic, value: dict | bytes, ts_ms: int, partition=None, key=None):
    if isinstance(value, dict):
        key = key or value.get("customer_id")
        value = orjson.dumps(value)
    partition = partition_for(key, settings.partitions) if partition is None else partition
    await agents[topic].put(value, key=key.encode() if key else None, partition=partition,
                            timestamp=ts_ms / 1000)
    return partition


async def _tick(agents, partition: int, at_ms: int):
    """The batch-end timer's step for the partition: stream time, and the end of its batch."""
    await app.ingest.end_batch(partition, at_ms)


def _drain(channel) -> list[dict]:
    got = []
    while not channel.empty():
        got.append(orjson.loads(channel.queue.get_nowait().value))   # already delivered: no waiting
    return got


def _seat_customer(cid="c-1", plan="basic"):
    return {"customer_id": cid, "segment": "b2b", "plan": plan, "signup_at": "2024-01-01T00:00:00Z"}


async def test_usage_over_the_limit_is_proposed_once_stream_time_passes_it(wired, monkeypatch):
    agents, out = wired
    monkeypatch.setattr(A, "META_EVERY", 3)      # the partition document every 3rd record here
    p = await _put(agents, "customers", _seat_customer(), T0)
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 46}, T0 + MIN)
    # buffered: stream time has not passed the events yet
    assert _drain(out["proposals"]) == []
    await _tick(agents, p, T0 + 2 * MIN)
    got = _drain(out["proposals"])
    assert [(g["customer_id"], g["trigger"], g["kind"]) for g in got] == [("c-1", "usage_limit", "upsell")]
    assert got[0]["created_at"] == format_ts(T0 + MIN)
    # state is in the table, keyed by customer, and the engine's partition is the event's
    state = orjson.loads(T.customer_state[b"c-1"])
    assert state["usage"]["seats"]["value"] == 46 and state["off"]["usage"] == 0
    assert p in app.ingest.partitions.runtimes and "c-1" in app.ingest.partitions.runtimes[p].engine.customers
    meta = orjson.loads(T.customer_state[A.meta_key(p)])       # written at the tick, the 3rd record
    assert meta["watermark"] == T0 + 2 * MIN and app.ingest.partitions.runtimes[p].engine.buffered() == 0


async def test_engines_are_per_partition(wired):
    agents, out = wired
    ids = [f"c-{i}" for i in range(40)]
    by_p = {}
    for cid in ids:
        by_p.setdefault(partition_for(cid, settings.partitions), []).append(cid)
    assert len(by_p) > 1
    for cid in ids:
        await _put(agents, "customers", _seat_customer(cid), T0)
        await _put(agents, "usage", {"customer_id": cid, "metric": "seats", "value": 46}, T0 + MIN)
    first = min(by_p)
    await _tick(agents, first, T0 + 2 * MIN)
    got = _drain(out["proposals"]) + [s for s in _drain(out["suppressed"]) if s["suppressed"]["reason"] == "holdout"]
    # only the ticked partition's customers: the others still wait for their stream time
    assert sorted(g["customer_id"] for g in got) == sorted(by_p[first])
    for p, cids in by_p.items():     # applied (ticked) or buffered, each on its own partition
        eng = app.ingest.partitions.runtimes[p].engine
        waiting = {e[1] for q in eng.fifo.values() for e in q}
        assert set(eng.customers) | waiting == set(cids)
        assert (p == first) == (not waiting)


async def test_late_event_and_unhappy_customer_are_suppressed_with_reason(wired):
    agents, out = wired
    p = await _put(agents, "customers", _seat_customer(), T0)
    await _put(agents, "feedback", {"customer_id": "c-1", "type": "ticket", "severity": "high",
                                     "ticket_id": "t-1", "status": "open"}, T0 + MIN)
    await _tick(agents, p, T0 + 2 * MIN)
    # an event older than stream time is applied at once (late), not lost
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 48}, T0 + MIN + 1)
    assert _drain(out["proposals"]) == []
    sup = _drain(out["suppressed"])
    assert [(s["trigger"], s["suppressed"]["reason"]) for s in sup] == [("usage_limit", "unhappy_customer")]
    assert app.ingest.partitions.runtimes[p].engine.stats["late_events"] == 1


async def test_invalid_events_go_to_dead_letters_with_original_bytes(wired):
    agents, out = wired
    raw = b'{"customer_id": "c-9", "metric": "seats", "value": "many"}'
    await _put(agents, "usage", raw, T0, partition=3, key="c-9")
    await _put(agents, "purchases", b"{oops", T0, partition=5, key="c-9")
    dl = _drain(out["dead_letters"])
    assert [(d["topic"], d["partition"], d["field"]) for d in dl] == [("usage", 3, "value"), ("purchases", 5, None)]
    assert original_bytes(dl[0]) == raw and dl[0]["original"] == raw.decode() and dl[0]["original_b64"] is None
    assert dl[0]["original_size"] == len(raw) and not dl[0]["truncated"] and dl[0]["timestamp"] == format_ts(T0)
    assert "malformed JSON" in dl[1]["error"]
    # nothing reached the state, and the agents still process valid events
    assert T.customer_state.get(b"c-9") is None
    p = await _put(agents, "customers", _seat_customer("c-9"), T0 + 1)
    await _tick(agents, p, T0 + 2)
    assert orjson.loads(T.customer_state[b"c-9"])["plan"] == "basic"


async def test_a_dead_letter_is_not_acknowledged_before_an_earlier_event_that_waits(wired):
    agents, out = wired
    p = await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 3}, T0)
    await _put(agents, "usage", b"{oops", T0 + 1, partition=p, key="c-1")
    assert len(_drain(out["dead_letters"])) == 1
    read = list(app.ingest.partitions.runtimes[p].acks[(T.inputs["usage"].get_topic_name(), p)].queue)
    assert [m.offset for m in read] == [0, 1] and not any(m.acked for m in read)
    await _tick(agents, p, T0 + MIN)                # the event is applied and written: both go
    assert all(m.acked for m in read) and not app.ingest.partitions.runtimes[p].acks[read[0].tp].queue


async def test_a_redelivered_event_changes_nothing(wired):
    agents, out = wired
    p = await _put(agents, "customers", _seat_customer(), T0)
    usage = agents["usage"]
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 46}, T0 + MIN)
    await _tick(agents, p, T0 + 2 * MIN)
    assert len(_drain(out["proposals"])) == 1
    before = T.customer_state[b"c-1"]
    usage.sent_offset -= 1        # the same offset again, as after a take-over
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 46}, T0 + MIN)
    assert T.customer_state[b"c-1"] == before
    assert app.ingest.partitions.runtimes[p].engine.stats["duplicates"] == 1 and app.ingest.partitions.runtimes[p].engine.stats["late_events"] == 0


async def test_engine_is_rebuilt_from_the_tables_and_pending_events_come_again(wired):
    agents, out = wired
    usage = agents["usage"]
    p = await _put(agents, "customers", _seat_customer(), T0)
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 30}, T0 + MIN)   # offset 0
    await _tick(agents, p, T0 + MIN + 1)                 # both applied, persisted and acknowledged
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 46}, T0 + 2 * MIN)  # 1
    assert app.ingest.partitions.runtimes[p].engine.buffered() == 1 and _drain(out["proposals"]) == []
    app.ingest.partitions.clear()        # a rebalance (what on_partitions_revoked does): the tables stay
    # the broker delivers again from the last committed offset: offset 0 (applied) and 1 (pending)
    usage.sent_offset = 0
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 30}, T0 + MIN)
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 46}, T0 + 2 * MIN)
    await _tick(agents, p, T0 + 3 * MIN)
    got = _drain(out["proposals"])
    assert [(g["trigger"], g["evidence"]["value"]) for g in got] == [("usage_limit", 46)]
    assert app.ingest.partitions.runtimes[p].engine.stats["duplicates"] == 1
    assert orjson.loads(T.customer_state[b"c-1"])["usage"]["seats"]["value"] == 46


async def test_the_partition_document_is_kept_with_the_customers(wired, monkeypatch):
    agents, _ = wired
    monkeypatch.setattr(A, "META_EVERY", 1)          # a partition document with every batch
    p = await _put(agents, "customers", _seat_customer(), T0)
    await _tick(agents, p, T0 + MIN)
    # in customer-state, under a key no customer id has, so in the customers' changelog partition
    assert orjson.loads(T.customer_state[A.meta_key(p)])["watermark"] == T0 + MIN
    assert A.meta_key(p).decode("utf-8", "replace") != A.meta_key(p).decode("latin-1")
    assert len(T.partition_state.data) == 0
    app.ingest.partitions.clear()                                 # restored: the document is not a customer
    eng = app.ingest.partitions[p].engine
    assert eng.watermark == T0 + MIN and list(eng.customers) == ["c-1"]
    # a document where earlier versions kept it is still read
    T.partition_state.data[str(p).encode()] = T.customer_state.data.pop(A.meta_key(p))
    app.ingest.partitions.clear()
    assert app.ingest.partitions[p].engine.watermark == T0 + MIN


def _records(monkeypatch, acked: list, offsets, tp=("usage", 0), on_ack=None):
    """Records of one topic-partition; Faust's consumer appends the offset of each it is told
    is acknowledged to `acked`."""
    monkeypatch.setattr(app.consumer, "ack", lambda m: acked.append(m.offset) or (on_ack and on_ack(m)))
    return [SimpleNamespace(tp=tp, partition=tp[1], offset=o, generation_id=1) for o in offsets]


def _runtime(monkeypatch, partition: int = 0):
    """A partition's runtime of its own (no engine)."""
    return A.PartitionRuntime(partition, None)


def test_a_revoked_partition_or_an_old_generation_acknowledges_nothing_more(monkeypatch):
    """A write that lands after its partition was revoked (or after a rebalance began a new
    consumer generation) acknowledges nothing: the partition's next owner reads those records."""
    rt = _runtime(monkeypatch)
    acked = []
    records = _records(monkeypatch, acked, [0, 1, 2])
    order = rt.acks_for(records[0])
    for r in records:
        order.read(r)
    A._ack([(order, records[0])])
    assert acked == [0]
    newer = SimpleNamespace(tp=records[1].tp, partition=0, offset=1, generation_id=2)
    assert rt.acks_for(newer) is not order                 # a new generation: a new order
    A._ack([(order, records[1])])
    assert acked == [0]
    partitions = A.Partitions()
    partitions.runtimes[0] = rt
    current = rt.acks_for(newer)
    current.read(newer)
    partitions.revoke([SimpleNamespace(partition=0)])
    A._ack([(current, newer)])
    assert acked == [0] and partitions.runtimes == {}


def test_records_are_acknowledged_to_faust_in_offset_order(monkeypatch):
    rt = _runtime(monkeypatch)
    acked = []
    records = _records(monkeypatch, acked, [0, 1, 2, 3, 3, 4])        # offset 3 read twice
    order = rt.acks_for(records[0])
    for r in records:
        order.read(r)
    order.ack(records[2])          # a dead letter read after two events still waiting: held
    order.ack(records[1])
    assert acked == []
    order.ack(records[0])
    assert acked == [0, 1, 2]
    order.ack(records[4])          # the second copy of offset 3 done: both copies go
    assert acked == [0, 1, 2, 3, 3]
    order.ack(records[5])
    assert acked == [0, 1, 2, 3, 3, 4] and not order.queue and not order.done
    # after a rebalance (a new consumer generation) the old order is left behind
    newer = SimpleNamespace(tp=("usage", 0), partition=0, offset=5, generation_id=2)
    assert rt.acks_for(newer) is not order and rt.acks_for(newer) is rt.acks_for(newer)


async def test_events_are_acknowledged_once_the_broker_has_their_batch(monkeypatch):
    monkeypatch.setattr(type(app.producer.buffer), "state", property(lambda self: "running"))
    rt = _runtime(monkeypatch)
    loop = asyncio.get_running_loop()
    acked, all_acked, crashed = [], loop.create_future(), loop.create_future()
    records = _records(monkeypatch, acked, range(4),
                       on_ack=lambda m: m.offset == 2 and all_acked.set_result(None))
    order = rt.acks_for(records[0])
    for r in records:
        order.read(r)
    monkeypatch.setattr(app, "crash", lambda exc: crashed.set_result(exc) or crashed)
    state, decisions = loop.create_future(), loop.create_future()
    A.ack_when_written([(order, r) for r in records[:3]], [decisions, state])
    assert acked == []                               # on its way: a commit now must not pass them
    state.set_result(None)
    await asyncio.sleep(0)                           # the state write's callback has run
    assert acked == []                               # the decisions are not in the broker yet
    decisions.set_result(None)
    await asyncio.wait_for(all_acked, 5)
    assert acked == [0, 1, 2]
    # a write that failed: not acknowledged, and the worker stops
    failed, fine = loop.create_future(), loop.create_future()
    A.ack_when_written([(order, records[3])], [failed, fine])
    fine.set_result(None)
    failed.set_exception(OSError("broker gone"))
    assert str(await asyncio.wait_for(crashed, 5)) == "broker gone"
    assert acked == [0, 1, 2]


@pytest.fixture
def backlog(monkeypatch):
    """As while reading a backlog: the consumer knows of later records on every partition,
    so only PERSIST_EVERY (4 here) and the batch-end timer end a batch."""
    monkeypatch.setattr(A, "caught_up", lambda rt, msg: False)
    monkeypatch.setattr(A, "PERSIST_EVERY", 4)


async def test_a_backlog_is_written_behind_and_decisions_are_not_held(wired, backlog):
    agents, out = wired
    p = partition_for("c-1", settings.partitions)
    await _tick(agents, p, T0 + 10 * MIN)            # later events are late: each is applied at once
    await _put(agents, "customers", _seat_customer(), T0)
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 46}, T0 + MIN)
    # the proposal is sent at once, but the batch is not written nor acknowledged yet
    assert [g["trigger"] for g in _drain(out["proposals"])] == ["usage_limit"]
    assert T.customer_state.get(b"c-1") is None and len(app.ingest.partitions.runtimes[p].held) == 2
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 30}, T0 + 2 * MIN)
    assert T.customer_state.get(b"c-1") is None and len(app.ingest.partitions.runtimes[p].held) == 3
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 31}, T0 + 3 * MIN)
    # the 4th record ends the batch: the customer is written once, with all three usage samples
    state = orjson.loads(T.customer_state[b"c-1"])
    assert state["usage"]["seats"]["value"] == 31 and state["off"] == {"customers": 0, "usage": 2}
    assert app.ingest.partitions.runtimes[p].held == {}
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 32}, T0 + 4 * MIN)
    assert len(app.ingest.partitions.runtimes[p].held) == 1
    await _tick(agents, p, T0 + 11 * MIN)            # a tick ends the batch too
    assert orjson.loads(T.customer_state[b"c-1"])["usage"]["seats"]["value"] == 32 and app.ingest.partitions.runtimes[p].held == {}


async def test_a_batch_lost_before_its_write_is_applied_again_with_the_same_decisions(wired, backlog):
    agents, out = wired
    p = partition_for("c-1", settings.partitions)
    await _tick(agents, p, T0 + 10 * MIN)
    await _put(agents, "customers", _seat_customer(), T0)
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 46}, T0 + MIN)
    first = _drain(out["proposals"])
    assert len(first) == 1 and T.customer_state.get(b"c-1") is None
    await A._revoked(None, [type("TP", (), {"partition": p})()])    # the worker loses the partition
    # nothing was acknowledged: the next owner reads both events again, from offset 0
    agents["customers"].sent_offset = agents["usage"].sent_offset = 0
    await _put(agents, "customers", _seat_customer(), T0)
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 46}, T0 + MIN)
    await _tick(agents, p, T0 + 11 * MIN)            # its stream time (the old tick was committed)
    again = _drain(out["proposals"])
    assert again == first          # at least once: the same proposal_id and content
    assert app.ingest.partitions.runtimes[p].engine.stats["duplicates"] == 0


def test_with_the_event_clock_a_batch_ends_once_the_consumer_is_caught_up(monkeypatch):
    from dataclasses import replace
    from types import SimpleNamespace
    highwater = {"usage": None, "feedback": 5}
    asked = []

    def consumer_highwater(tp):
        asked.append(tp)
        return highwater[tp]
    monkeypatch.setattr(A, "app", SimpleNamespace(consumer=SimpleNamespace(highwater=consumer_highwater)))
    rt = A.PartitionRuntime(0, None)
    msg = lambda offset, tp="usage": SimpleNamespace(tp=tp, offset=offset)   # noqa: E731
    monkeypatch.setattr(A, "settings", replace(settings, clock="event"))
    assert A.caught_up(rt, msg(3))        # not fetched yet: cannot tell, so write
    highwater["usage"] = 5            # the consumer knows of offsets 0..4
    assert [A.caught_up(rt, msg(o)) for o in (3, 4)] == [False, True]
    asked.clear()
    assert not A.caught_up(rt, msg(2))    # below a high-water mark seen: known without asking
    assert asked == []
    highwater["usage"] = 9            # more records fetched
    assert [A.caught_up(rt, msg(o)) for o in (4, 8)] == [False, True]
    assert A.caught_up(rt, msg(0, "feedback")) is False and asked == ["usage", "usage", "feedback"]
    monkeypatch.setattr(A, "settings", replace(settings, clock="wall"))
    highwater["usage"] = 5
    assert not A.caught_up(rt, msg(4))    # live, the batch-end timer ends the batches


async def test_live_clock_decides_at_once_and_the_tick_record_writes(wired):
    agents, out = wired
    p = await _put(agents, "customers", _seat_customer(), T0)
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 46}, T0 + MIN)
    await app.ingest.advance(T0 + MIN + settings.lateness_ms)       # stream time reaches the usage event, not past it
    assert _drain(out["proposals"]) == []
    await app.ingest.advance(T0 + MIN + 1 + settings.lateness_ms)   # ... and now past it: decided at once
    got = _drain(out["proposals"])
    assert [(g["trigger"], g["created_at"]) for g in got] == [("usage_limit", format_ts(T0 + MIN))]
    # applied but neither written nor acknowledged until the partition's batch end
    assert app.ingest.partitions.runtimes[p].engine.buffered() == 0 and len(app.ingest.partitions.runtimes[p].held) == 2
    assert T.customer_state.get(b"c-1") is None
    await _tick(agents, p, T0 + MIN + 1)
    assert orjson.loads(T.customer_state[b"c-1"])["off"] == {"customers": 0, "usage": 0}
    assert app.ingest.partitions.runtimes[p].held == {} and _drain(out["proposals"]) == []


async def test_table_values_are_exact_size_copies(wired):
    import tracemalloc
    agents, _ = wired
    p = await _put(agents, "customers", _seat_customer(), T0)
    await _tick(agents, p, T0 + 1)
    stored = T.customer_state[b"c-1"]
    await _tick(agents, p, T0 + 2)                      # a batch without it: kept as the table's bytes
    assert app.ingest.partitions.runtimes[p].engine.customers["c-1"] is stored
    assert stored == orjson.dumps(app.ingest.partitions.runtimes[p].engine.customer("c-1"))
    # orjson's own bytes carry its write buffer (kilobytes); what the table keeps must not
    tracemalloc.start()
    kept = [A.dumps(app.ingest.partitions.runtimes[p].engine.customer("c-1")) for _ in range(100)]
    per_value = tracemalloc.get_traced_memory()[0] / len(kept)
    tracemalloc.stop()
    assert per_value < 2 * len(stored) + 100


async def test_a_watermark_record_is_acknowledged_with_the_batch_that_writes_it(wired, backlog, monkeypatch):
    from streams.replay import WATERMARK_HEADER
    agents, _ = wired
    monkeypatch.setattr(A, "META_EVERY", 2)      # the partition document with the batch of 2 records
    p = partition_for("c-1", settings.partitions)
    marker = await agents["usage"].put(b"", partition=p, timestamp=(T0 + MIN) / 1000,
                                       headers=[(WATERMARK_HEADER, str(T0 + MIN).encode())])
    assert app.ingest.partitions.runtimes[p].marks == [marker]
    # not written yet: acknowledged, a successor restoring the tables would not know this watermark
    assert not marker.acked and T.customer_state.get(A.meta_key(p)) is None
    await _tick(agents, p, T0)                     # the batch ends, the partition document is written
    assert marker.acked and app.ingest.partitions.runtimes[p].marks == []
    assert orjson.loads(T.customer_state[A.meta_key(p)])["hw"]["usage"] == T0 + MIN


async def test_the_app_freezes_its_start_up_heap_for_the_garbage_collector():
    import gc

    from streams.transport import freeze_startup_heap
    tasks = [t for t in app._app_tasks if getattr(t, "__wrapped__", None) is freeze_startup_heap]
    assert len(tasks) == 1            # registered by the worker's app module, run when the app starts
    gc.unfreeze()
    try:
        await tasks[0]()
        assert gc.get_freeze_count() > 10_000       # modules, Faust, aiokafka: all of it
    finally:
        gc.unfreeze()


async def test_full_collections_come_from_the_app_s_timer_not_from_the_collector():
    import asyncio
    import gc

    from streams.transport import NEVER, _full_collections, full_collections
    tasks = [t for t in app._app_tasks if getattr(t, "__wrapped__", None) is _full_collections]
    assert len(tasks) == 1 and app.full_gc_interval == 60.0       # registered; the default interval
    before = gc.get_threshold()
    loop = asyncio.get_running_loop()
    full = asyncio.Event()

    def seen(phase, info):
        if phase == "stop" and info["generation"] == 2:
            loop.call_soon_threadsafe(full.set)

    await full_collections(0)                     # 0: returns at once, the collector as it was
    assert gc.get_threshold() == before
    gc.callbacks.append(seen)
    timer = asyncio.create_task(full_collections(0.05))
    try:
        await asyncio.sleep(0)                    # the task has started
        assert gc.get_threshold() == (before[0], before[1], NEVER)
        await asyncio.wait_for(full.wait(), 5)    # a full collection, on the timer
        full.clear()
        await asyncio.wait_for(full.wait(), 5)    # and another
    finally:
        gc.callbacks.remove(seen)
        timer.cancel()
        await asyncio.gather(timer, return_exceptions=True)
    assert gc.get_threshold() == before           # restored once it ends


@pytest.mark.parametrize("ts_ms", [T0 * 1000, -1, 4_102_444_800_000])   # µs as ms, none, year 2100
async def test_an_event_time_out_of_range_is_a_dead_letter_and_moves_no_stream_time(wired, ts_ms):
    from streams.replay import WATERMARK_HEADER
    agents, out = wired
    p = await _put(agents, "customers", _seat_customer(), T0)
    await _tick(agents, p, T0 + 1)
    watermark = app.ingest.partitions.runtimes[p].engine.watermark
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 49}, ts_ms)
    await agents["usage"].put(b"", partition=p, timestamp=T0 / 1000,
                              headers=[(WATERMARK_HEADER, str(ts_ms).encode())])
    await agents["usage"].put(b"", partition=p, timestamp=T0 / 1000, headers=[(WATERMARK_HEADER, b"soon")])
    dl = _drain(out["dead_letters"])
    assert [d["error"].split(" ")[:2] for d in dl] == [["record", "timestamp"]] * 2 + [["watermark", "record:"]]
    assert str(ts_ms) in dl[0]["error"] and dl[0]["timestamp"] is None and dl[0]["partition"] == p
    assert app.ingest.partitions.runtimes[p].engine.watermark == watermark and app.ingest.partitions.runtimes[p].engine.stats["events"]["usage"] == 0
    # the worker goes on: the next valid event is applied and decided
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 49}, T0 + 2)
    await _tick(agents, p, T0 + MIN)
    assert [x["trigger"] for x in _drain(out["proposals"])] == ["usage_limit"]


async def test_a_batch_end_waits_while_the_producer_buffer_is_over_its_limit():
    """`ebb` on Faust's own producer buffer, started, with its sends recorded instead of made."""
    from faust.transport.producer import ProducerBuffer

    buffer = ProducerBuffer(loop=asyncio.get_running_loop())
    buffer.app = app
    sent, gate = [], asyncio.Event()

    async def send(fut):
        await gate.wait()               # the broker: nothing leaves until the test lets it
        sent.append(fut)

    buffer._send_pending = send
    await buffer.start()
    try:
        for i in range(30):
            buffer.put(i)
        waiting = asyncio.ensure_future(A.ebb(buffer, high=10))
        await asyncio.sleep(0)
        assert not waiting.done() and buffer.size >= 29   # over the limit, nothing sent: it waits
        gate.set()
        await asyncio.wait_for(waiting, 5)
        assert buffer.size <= 5                           # down to half the limit
        assert sent[:3] == [0, 1, 2]
        await asyncio.wait_for(A.ebb(buffer, high=10), 1)  # under the limit: no wait
    finally:
        gate.set()
        await buffer.stop()


async def test_the_local_clock_decides_once_the_event_falls_due_not_at_the_next_tick(wired, monkeypatch):
    """Live, an event is decided as soon as stream time (wall clock - lateness) can pass it; the
    tick (a minute here) only bounds how long stream time stands still when nothing waits."""
    from dataclasses import replace

    from streams.clock import WALL, LocalClock
    agents, out = wired
    lateness = 40
    monkeypatch.setattr(A, "settings", replace(settings, lateness_ms=lateness))
    local = LocalClock(WALL, lateness, tick_ms=60_000, resolution_ms=1)
    monkeypatch.setattr(app.ingest, "clock", local)
    task = asyncio.create_task(local.run(app.ingest.advance, app.ingest.waiting))
    try:
        now = WALL.now_ms()
        await _put(agents, "customers", _seat_customer(), now - 60_000)
        await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 46}, now)
        got = orjson.loads((await asyncio.wait_for(out["proposals"].queue.get(), 20)).value)
        decided = WALL.now_ms()
    finally:
        task.cancel()
    assert (got["trigger"], got["created_at"]) == ("usage_limit", format_ts(now))
    assert decided >= now + lateness + 1          # never before stream time may pass the event
    assert 2 <= local.moves < 20                  # the start, then a move or two: not a busy loop
