"""`streams.inbox`: input records from Faust's consumer to the worker without a stream per record.
On the real app (its conductor, flow control and consumer bookkeeping), without a broker; the
integration suite runs the same path against one."""
from __future__ import annotations

import asyncio

import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

import agents.engine as A
from streams import topics as T
from streams.app import app
from streams.inbox import Inbox, writing_for


def _message(topic: str, partition: int = 0, offset: int = 0, generation_id=None) -> ConsumerMessage:
    gen = app.consumer_generation_id if generation_id is None else generation_id
    return ConsumerMessage(topic, partition, offset, 1.0, 0, None, b"k", b"{}", None, generation_id=gen)


@pytest.fixture
def flowing():
    app.flow_control.resume()        # as after an assignment (it starts suspended)
    yield app.flow_control
    app.flow_control.resume()


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
    assert app.inboxes[usage] is A.INBOX and T.inputs["usage"] in app.topics     # subscribed
    handler = app.topics._build_handler(TP(usage, 3), {T.inputs["usage"]})
    message = _message(usage, 3, 7)
    await handler(message)
    # queued as the consumer's message itself (no event), and tracked for acknowledgement
    assert await A.INBOX.take() == [message]
    assert message.tracked and message in app.consumer.unacked      # a fetched message starts untracked
    app.consumer.unacked.discard(message)
    # a topic no inbox takes keeps Faust's own handler (decode, channel queue, stream)
    ticks = app.topics._build_handler(TP(T.ticks.get_topic_name(), 0), {T.ticks})
    assert handler.__qualname__.startswith("Inbox.handler") and type(ticks) is not type(handler)


async def test_deliver_skips_what_a_stream_would_skip(flowing):
    usage = T.inputs["usage"].get_topic_name()
    got = []

    async def handle(message):
        got.append(message.offset)
    now = app.consumer_generation_id
    await A.INBOX.deliver([_message(usage, 0, 0), _message(usage, 0, 1, generation_id=now - 1),
                           _message(usage, 0, 2)], handle)
    assert got == [0, 2]              # fetched before the latest rebalance: the next owner reads it
    flowing.suspend()                 # rebalancing
    await A.INBOX.deliver([_message(usage, 0, 3)], handle)
    assert got == [0, 2]


async def test_a_full_inbox_stops_fetching_the_partition_until_it_drains(scratch, monkeypatch):
    make, name = scratch
    full, drop = [], []
    monkeypatch.setattr(app.consumer, "on_buffer_full", full.append)
    monkeypatch.setattr(app.consumer, "on_buffer_drop", drop.append)
    inbox = make(4)
    tp = TP(name, 0)
    on_message = app.topics._build_handler(tp, set())
    sent = [_message(name, 0, o) for o in range(6)]
    for m in sent[:4]:
        await on_message(m)
    assert full == [tp] and drop == []        # under pressure at 3 of 4: the fetcher leaves it out
    waiting = asyncio.ensure_future(on_message(sent[4]))       # full: the fetcher waits for room
    await asyncio.sleep(0)
    assert not waiting.done()
    assert await inbox.take(most=3) == sent[:3]
    await asyncio.wait_for(waiting, 5)                         # room (half empty): the wait ends
    assert drop == []
    assert await inbox.take() == sent[3:5]
    assert drop == [tp]                                        # drained to 40%: fetched again
    await on_message(sent[5])
    assert await inbox.take() == sent[5:] and full == [tp]


async def test_table_writes_go_to_the_partition_written_for():
    with pytest.raises(TypeError, match="outside of stream iteration"):
        T.customer_state[b"inbox-test"] = b"1"
    for p in (2, 5):
        with writing_for(T.ticks.get_topic_name(), p):
            T.customer_state[b"inbox-test"] = b"%d" % p
        assert T.customer_state.last_write[p].message.key == b"inbox-test"
        assert T.customer_state.last_write[p].message.partition == p
    assert T.customer_state[b"inbox-test"] == b"5"
    T.customer_state.data.pop(b"inbox-test")
