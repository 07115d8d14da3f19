"""`streams.inbox`: input records from Faust's consumer to the worker without a stream per record.
On the real app (its conductor, flow control and consumer bookkeeping), without a broker; the
integration suite runs the same path against one."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types import TP
from mode.utils.queues import FlowControlEvent
from faust.types.tuples import ConsumerMessage

import agents.ingest as A
from streams import topics as T
from streams.app import app
from streams.inbox import Inbox, writing_for
from streams.timeslice import TimeSlice


def _message(topic: str, partition: int = 0, offset: int = 0, generation_id=None) -> ConsumerMessage:
    gen = app.consumer_generation_id if generation_id is None else generation_id
    return ConsumerMessage(topic, partition, offset, 1.0, 0, None, b"k", b"{}", None, generation_id=gen)


@pytest.fixture
def flowing(monkeypatch):
    """Faust's flow control, resumed as after an assignment (it starts suspended); one of its own
    per test, as its events belong to the event loop that first waits on them."""
    flow = FlowControlEvent(initially_suspended=False)
    monkeypatch.setattr(app, "flow_control", flow)
    return flow


@pytest.fixture
def scratch(flowing):
    """An inbox of its own on a topic no agent reads, removed afterwards."""
    topic = app.topic("inbox-test", partitions=1)
    made = []

    def make(maxsize):
        made.append(Inbox(app, {"test": topic}, maxsize=maxsize))
        return made[-1]
    yield make, topic.get_topic_name()
    app.inboxes.pop(topic.get_topic_name(), None)
    app.topics.discard(topic)


async def test_the_conductor_hands_the_input_topics_to_the_inbox(flowing):
    usage = T.inputs["usage"].get_topic_name()
    assert app.inboxes[usage] is app.ingest.inbox and T.inputs["usage"] in app.topics     # subscribed
    handler = app.topics._build_handler(TP(usage, 3), {T.inputs["usage"]})
    message = _message(usage, 3, 7)
    await handler(message)
    # queued as the consumer's message itself (no event), and tracked for acknowledgement
    assert await app.ingest.inbox.take() == [message]
    assert message.tracked and message in app.consumer.unacked      # a fetched message starts untracked
    app.consumer.unacked.discard(message)
    # a topic no inbox takes keeps Faust's own handler (decode, channel queue, stream)
    other = app.topics._build_handler(TP(T.proposals.get_topic_name(), 0), {T.proposals})
    assert handler.__qualname__.startswith("Inbox.handler") and type(other) is not type(handler)


def test_the_engines_consumer_does_not_read_the_decisions():
    """The read model reads them with a consumer of its own (agents/readmodel.py): not the
    engine's Faust consumer, whose fetches are the worker's latency path."""
    import agents.readmodel as R
    for topic in (T.proposals, T.suppressed):
        name = topic.get_topic_name()
        assert name in R.KINDS and name not in app.inboxes and topic not in app.topics
        assert name not in {t for sub in app.topics for t in sub.topics}


async def test_deliver_skips_an_earlier_generation_and_waits_while_flow_is_suspended(flowing):
    usage = T.inputs["usage"].get_topic_name()
    got = []

    async def handle(message):
        got.append(message.offset)
    now = app.consumer_generation_id
    await app.ingest.inbox.deliver([_message(usage, 0, 0), _message(usage, 0, 1, generation_id=now - 1),
                           _message(usage, 0, 2)], handle)
    assert got == [0, 2]              # fetched before the latest rebalance: Faust seeks back to it
    flowing.suspend()                 # rebalancing: handed on once flow resumes, if still current
    later = asyncio.ensure_future(app.ingest.inbox.deliver([_message(usage, 0, 3), _message(usage, 0, 4)], handle))
    await asyncio.sleep(0)            # one loop turn: it runs until it waits
    assert not later.done() and got == [0, 2]
    flowing.resume()
    await asyncio.wait_for(later, 5)
    assert got == [0, 2, 3, 4]


async def test_deliver_lets_the_event_loop_run_between_records_once_a_slice_is_spent(flowing, monkeypatch):
    """A handler that never waits would hold the clock's moves and the broker's acknowledgements
    for a whole fetch; each slice of work ends with a turn of the event loop."""
    usage = T.inputs["usage"].get_topic_name()
    seen = []
    other = asyncio.Event()

    async def handle(message):
        seen.append((message.offset, other.is_set()))
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(TimeSlice, "SECONDS", 0.0)         # every record spends the slice
    loop.call_soon(other.set)                                # runs at the first turn of the loop
    await app.ingest.inbox.deliver([_message(usage, 0, 0), _message(usage, 0, 1)], handle)
    assert seen == [(0, False), (1, True)]
    monkeypatch.setattr(TimeSlice, "SECONDS", 3600.0)      # a slice longer than the batch: no turn
    other.clear()
    loop.call_soon(other.set)
    await app.ingest.inbox.deliver([_message(usage, 0, 2), _message(usage, 0, 3)], handle)
    assert seen[2:] == [(2, False), (3, False)]


async def test_a_resume_of_flow_keeps_what_the_inbox_holds(scratch, flowing):
    """Faust clears its channels' queues when it resumes flow after recovery, after it has sought
    the input partitions to their committed offsets: records fetched in between would be lost
    (the fetcher's read offset is past them). The inbox keeps them."""
    make, name = scratch
    inbox = make(10)
    held = [_message(name, 0, 0), _message(name, 0, 1)]
    await inbox.put(held)
    flowing.suspend()
    flowing.resume()                 # clears the queues it manages
    assert len(inbox) == 2 and await inbox.take() == held


async def test_a_full_inbox_holds_the_fetcher_until_it_has_drained_to_half(scratch):
    make, name = scratch
    inbox = make(4)
    sent = [_message(name, 0, o) for o in range(6)]
    await inbox.put(sent[:4])
    assert all(m.tracked and m in app.consumer.unacked for m in sent[:4])
    waiting = asyncio.ensure_future(inbox.put(sent[4:]))       # full: the fetcher waits for room
    await asyncio.sleep(0)                                     # one loop turn: it runs until it waits
    assert not waiting.done() and len(inbox) == 4
    assert await inbox.take(most=1) == sent[:1]
    await asyncio.sleep(0)
    assert not waiting.done()                                  # 3 of 4: not yet
    assert await inbox.take(most=1) == sent[1:2]               # 2 of 4: room
    await asyncio.wait_for(waiting, 5)
    assert await inbox.take() == sent[2:]
    for m in sent:
        app.consumer.unacked.discard(m)


def _record(topic, partition, offset):
    """A record as aiokafka's consumer returns it."""
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, timestamp=1000 * offset,
                           timestamp_type=0, headers=[], key=b"k", value=b"{}", checksum=None,
                           serialized_key_size=1, serialized_value_size=2)


async def test_a_fetch_hands_an_inbox_its_records_whole_and_faust_the_rest(scratch, monkeypatch):
    make, name = scratch
    inbox = make(100)
    consumer = app.consumer
    mine, other, paused = TP(name, 0), TP(T.proposals.get_topic_name(), 0), TP(name, 1)
    fetched = {mine: [_record(name, 0, o) for o in (4, 5, 7)], other: [_record(other.topic, 0, 9)],
               paused: [_record(name, 1, 0)]}

    async def getmany(active_partitions, timeout):
        return dict(fetched)
    monkeypatch.setattr(consumer, "_getmany", getmany)
    monkeypatch.setattr(consumer, "_get_active_partitions", lambda: {mine, other})
    monkeypatch.setattr(consumer, "flow_active", True)
    monkeypatch.setattr(consumer, "highwater", lambda tp: 8)
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda topic: True)
    monkeypatch.setitem(consumer._read_offset, mine, 4)          # offset 4 was read before
    records, active = await consumer._wait_next_records(1.0)
    # Faust's per-record path gets the other topic's records, and the paused partition's (it drops them)
    assert set(records) == {other, paused} and active == {mine, other}
    got = await inbox.take()
    assert [(m.tp, m.offset, m.timestamp, m.generation_id) for m in got] == [
        (mine, 4, 4.0, app.consumer_generation_id), (mine, 5, 5.0, app.consumer_generation_id),
        (mine, 7, 7.0, app.consumer_generation_id)]
    assert consumer._read_offset[mine] == 7
    assert sorted((i.begin, i.end) for i in consumer._gap[mine]) == [(6, 7)]   # 6 never comes: committable
    assert app.monitor.tp_end_offsets[mine] == 8
    for m in got:
        consumer.unacked.discard(m)
    consumer._gap.pop(mine, None)
    # while Faust has flow suspended, nothing is taken: its getmany seeks back
    monkeypatch.setattr(consumer, "flow_active", False)
    resumed = asyncio.Event()
    resumed.set()
    monkeypatch.setattr(consumer, "can_resume_flow", resumed)
    records, _ = await consumer._wait_next_records(1.0)
    assert mine in records and len(inbox) == 0


async def test_a_fetch_lets_the_event_loop_run_between_partitions_and_stops_at_a_rebalance(scratch, monkeypatch):
    make, name = scratch
    inbox = make(100)
    consumer = app.consumer
    first, second = TP(name, 0), TP(name, 1)

    async def getmany(active_partitions, timeout):
        return {first: [_record(name, 0, 0)], second: [_record(name, 1, 0)]}
    monkeypatch.setattr(consumer, "_getmany", getmany)
    monkeypatch.setattr(consumer, "_get_active_partitions", lambda: {first, second})
    monkeypatch.setattr(consumer, "flow_active", True)
    monkeypatch.setattr(consumer, "highwater", lambda tp: 1)
    for tp in (first, second):
        monkeypatch.setitem(consumer._read_offset, tp, None)
    monkeypatch.setattr(TimeSlice, "SECONDS", 0.0)          # each partition spends the slice
    # a rebalance begins at the first turn of the event loop, after the first partition's records
    asyncio.get_running_loop().call_soon(setattr, consumer, "flow_active", False)
    records, _ = await consumer._wait_next_records(1.0)
    got = await inbox.take()
    assert [m.tp for m in got] == [first]
    assert set(records) == {second}          # left to Faust's getmany, which seeks back
    for m in got:
        consumer.unacked.discard(m)


async def test_a_seek_while_the_inbox_is_full_keeps_the_read_offset_faust_set(scratch, monkeypatch):
    """The fetcher waits for room; meanwhile Faust seeks the partition back (its recovery's seek
    to the committed offset): the read offset it set stands, so what was sought back is read
    again, instead of being skipped as read."""
    make, name = scratch
    inbox = make(1)
    consumer = app.consumer
    tp = TP(name, 0)
    monkeypatch.setattr(consumer, "highwater", lambda tp: 8)
    monkeypatch.setitem(consumer._read_offset, tp, 4)
    await inbox.put([_message(name, 0, 3)])                   # full
    waiting = asyncio.ensure_future(consumer._to_inbox(inbox, tp, [_record(name, 0, o) for o in (4, 5)]))
    await asyncio.sleep(0)                                     # one loop turn: it runs until it waits
    assert not waiting.done()
    consumer._read_offset[tp] = 2                              # Faust's seek to the committed offset
    assert [m.offset for m in await inbox.take()] == [3]
    await asyncio.wait_for(waiting, 5)
    assert consumer._read_offset[tp] == 2
    assert [m.offset for m in await inbox.take()] == [4, 5]   # queued: read again, then deduplicated
    monkeypatch.setitem(consumer._read_offset, tp, 4)
    await consumer._to_inbox(inbox, tp, [_record(name, 0, o) for o in (4, 5)])
    assert consumer._read_offset[tp] == 5                      # no seek: the fetch moves it on
    await inbox.take()


async def test_table_writes_go_to_the_partition_written_for():
    with pytest.raises(TypeError, match="outside of stream iteration"):
        T.customer_state[b"inbox-test"] = b"1"
    for p in (2, 5):
        with writing_for(T.inputs["usage"].get_topic_name(), p):
            T.customer_state[b"inbox-test"] = b"%d" % p
        assert T.customer_state.last_write[p].message.key == b"inbox-test"
        assert T.customer_state.last_write[p].message.partition == p
    assert T.customer_state[b"inbox-test"] == b"5"
    T.customer_state.data.pop(b"inbox-test")


async def test_batched_table_writes_without_a_producer_are_faust_writes():
    """The agents' test driver runs no producer: `write_many` is `table[key] = value` for each
    key, in order, to the partition written for."""
    with writing_for(T.inputs["usage"].get_topic_name(), 6):
        T.customer_state.write_many(6, [(b"inbox-a", b"1"), (b"inbox-b", b"2"), (b"inbox-a", b"3")])
    assert T.customer_state.last_write[6].message.key == b"inbox-a"
    assert T.customer_state.last_write[6].message.value == b"3"
    assert T.customer_state.last_write[6].message.partition == 6
    assert T.customer_state[b"inbox-a"] == b"3" and T.customer_state[b"inbox-b"] == b"2"
    assert T.WRITES.unsent_bytes == 0
    T.customer_state.data.pop(b"inbox-a")
    T.customer_state.data.pop(b"inbox-b")


async def test_an_error_in_the_handler_ends_the_run(scratch):
    """Not swallowed: the ingest task ends with it and Faust stops the worker (mode crashes a
    service whose task raises). The failing record is never acknowledged, so no commit passes it:
    the partition's next owner reads it again."""
    make, name = scratch
    inbox = make(10)
    await inbox.put([_message(name, 0, 0), _message(name, 0, 1)])
    seen = []

    async def handle(message):
        seen.append(message.offset)
        raise RuntimeError("engine bug")
    with pytest.raises(RuntimeError, match="engine bug"):
        await asyncio.wait_for(inbox.run(handle), 5)
    assert seen == [0]
