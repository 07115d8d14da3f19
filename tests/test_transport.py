"""streams.transport: Faust's fetcher (InPlaceWaitFirst), its stream buffers (RefillAtHalf), the partitions it
pauses (PausedInTheClient), the consumer on the app's loop (ConsumerOnAppLoop)."""
from __future__ import annotations

import asyncio
import gc
import threading
import warnings
from types import SimpleNamespace

import aiokafka
import mode
import pytest
from faust.types import TP

from streams.transport import (App, InPlaceWaitFirst, PausedInTheClient, RefillAtHalf, _Consumer, ConsumerOnAppLoop,
                               FetchWait, consumer_runs_on)


class Fetching(InPlaceWaitFirst, mode.Service):
    """A service shaped like Faust's consumer for `wait_first`: a flow event to race."""

    def __init__(self):
        super().__init__()
        self.suspend_flow = asyncio.Event()


@pytest.fixture
async def tasks_made():
    """Counts the tasks the event loop creates while the test runs."""
    loop = asyncio.get_running_loop()
    made = []
    previous = loop.get_task_factory()

    def factory(loop, coro, **kwargs):
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    yield made
    loop.set_task_factory(previous)


def test_the_worker_consumer_runs_the_callback_in_place():
    assert issubclass(_Consumer, InPlaceWaitFirst)


async def test_a_callback_that_need_not_wait_runs_in_place_with_no_task(tasks_made):
    svc, delivered = Fetching(), []

    async def callback(message):
        delivered.append(message)
        return "done"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = len(tasks_made)
        res = await svc.wait_first(callback(1), svc.suspend_flow.wait())
        made = tasks_made[before:]
        gc.collect()            # a coroutine dropped without being closed warns when collected
    assert delivered == [1]
    assert res.results == ["done"] and not res.stopped
    assert made == []
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_a_callback_that_waits_for_room_finishes_once_there_is_room():
    svc, buffer = Fetching(), asyncio.Queue(maxsize=1)
    buffer.put_nowait("earlier")

    async def callback(message):
        await buffer.put(message)       # full: waits, as the conductor does for a full channel
        return message

    waiting = asyncio.ensure_future(svc.wait_first(callback("later"), svc.suspend_flow.wait()))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert await buffer.get() == "earlier"
    res = await waiting
    assert res.results == ["later"] and not res.stopped
    assert buffer.get_nowait() == "later"


async def test_flow_suspended_while_a_callback_waits_cancels_the_callback():
    svc, buffer, seen = Fetching(), asyncio.Queue(maxsize=1), []
    buffer.put_nowait("earlier")

    async def callback(message):
        try:
            await buffer.put(message)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    waiting = asyncio.ensure_future(svc.wait_first(callback("later"), svc.suspend_flow.wait()))
    await asyncio.sleep(0)
    svc.suspend_flow.set()              # a rebalance: Faust stops delivering
    res = await waiting
    assert res.results == [True] and not res.stopped     # the flow event won, alone
    await asyncio.sleep(0)              # the cancelled callback's task runs its handler
    assert seen == ["cancelled"]
    assert buffer.qsize() == 1 and buffer.get_nowait() == "earlier"


async def test_errors_reach_the_fetcher_whether_raised_in_place_or_after_a_wait():
    svc = Fetching()

    async def bad_now(message):
        raise ValueError(message)

    with pytest.raises(ValueError, match="now"):
        await svc.wait_first(bad_now("now"), svc.suspend_flow.wait())

    gate = asyncio.Event()

    async def bad_later(message):
        await gate.wait()
        raise ValueError(message)

    waiting = asyncio.ensure_future(svc.wait_first(bad_later("later"), svc.suspend_flow.wait()))
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(ValueError, match="later"):
        await waiting


async def test_with_flow_suspended_it_is_faust_s_own_wait_first(tasks_made):
    svc = Fetching()
    svc.suspend_flow.set()

    async def callback(message):
        return message

    before = len(tasks_made)
    res = await svc.wait_first(callback(1), svc.suspend_flow.wait())
    assert len(tasks_made) - before == 4    # the callback, the flow event, stopped and crashed: Faust's way
    assert res.done


async def test_a_full_stream_buffer_wakes_its_putter_once_down_to_half():
    app = App("refill-test", broker="memory://", store="memory://")
    app.flow_control.resume()           # as a running app's is
    buffer = app.FlowControlQueue(maxsize=4)
    assert isinstance(buffer, RefillAtHalf)
    for i in range(4):
        buffer.put_nowait(i)
    putting = asyncio.ensure_future(buffer.put(4))
    for _ in range(3):
        await asyncio.sleep(0)          # loop turns: a putter woken at once would be done by now
    assert not putting.done()
    assert buffer.get_nowait() == 0     # 3 left, more than half: the putter stays asleep
    for _ in range(3):
        await asyncio.sleep(0)
    assert not putting.done()
    assert buffer.get_nowait() == 1     # 2 left: half
    await asyncio.wait_for(putting, 1)
    assert [buffer.get_nowait() for _ in range(buffer.qsize())] == [2, 3, 4]


class Pausing:
    """Faust's side of `pause_partitions` / `resume_partitions`: the partitions it leaves out of
    the fetches it asks for."""

    def __init__(self):
        self.faust_paused: set = set()

    def pause_partitions(self, tps):
        self.faust_paused.update(tps)

    def resume_partitions(self, tps):
        self.faust_paused.difference_update(tps)


class ClientThread:
    """A consumer thread as Faust's: its own event loop in its own thread, holding the client."""

    def __init__(self, client):
        self._consumer = client
        self.thread_loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.thread_loop.run_forever, daemon=True)
        self.thread.start()

    def settled(self):
        """Waits until every call handed to the thread's loop so far has run (they run in order)."""
        done = threading.Event()
        self.thread_loop.call_soon_threadsafe(done.set)
        assert done.wait(5)

    def stop(self):
        self.thread_loop.call_soon_threadsafe(self.thread_loop.stop)
        self.thread.join(5)
        self.thread_loop.close()


class Consuming(PausedInTheClient, Pausing):
    pass


async def test_partitions_faust_pauses_are_paused_in_the_client_too():
    client = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")    # never started
    changelog, events = aiokafka.TopicPartition("x-changelog", 0), aiokafka.TopicPartition("events", 0)
    client.assign([changelog, events])
    consumer, thread = Consuming(), ClientThread(client)
    consumer._thread = thread
    try:
        # Faust's TP, and one the client does not have (it would raise in the client)
        consumer.pause_partitions({TP("x-changelog", 0), TP("other", 3)})
        thread.settled()
        assert client.paused() == {changelog}
        assert consumer.faust_paused == {TP("x-changelog", 0), TP("other", 3)}
        consumer.resume_partitions([TP("x-changelog", 0)])
        thread.settled()
        assert client.paused() == set() and consumer.faust_paused == {TP("other", 3)}
    finally:
        thread.stop()
        await client.stop()


def test_the_worker_consumer_pauses_in_the_client():
    assert issubclass(_Consumer, PausedInTheClient)


def test_pausing_before_the_client_exists_is_faust_s_alone():
    consumer = Consuming()
    consumer._thread = SimpleNamespace(_consumer=None)
    consumer.pause_partitions([TP("x-changelog", 0)])
    assert consumer.faust_paused == {TP("x-changelog", 0)}


async def test_pausing_after_the_client_thread_has_stopped_is_faust_s_alone():
    client = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
    consumer, thread = Consuming(), ClientThread(client)
    consumer._thread = thread
    thread.stop()                       # as at shutdown, when Faust pauses the whole assignment
    try:
        consumer.pause_partitions([TP("x-changelog", 0)])
        assert consumer.faust_paused == {TP("x-changelog", 0)}
    finally:
        await client.stop()


@pytest.mark.parametrize("in_thread", [False, True])
async def test_the_consumer_runs_on_the_app_s_loop_unless_asked_for_a_thread(in_thread):
    app = App("t-consumer", broker="kafka://127.0.0.1:9", consumer_thread=in_thread)
    loop = asyncio.get_running_loop()
    app.loop = loop
    thread = app.consumer._thread
    assert type(thread) is (FetchWait if in_thread else ConsumerOnAppLoop)
    assert (thread.thread_loop is loop) is not in_thread
    assert consumer_runs_on(app, loop) == ("thread" if in_thread else "loop")


async def test_the_in_loop_consumer_calls_in_place():
    app = App("t-consumer-loop", broker="kafka://127.0.0.1:9")
    app.loop = asyncio.get_running_loop()
    thread = app.consumer._thread
    here = threading.get_ident()

    async def coro(x):
        return (x, threading.get_ident())

    # what Faust's consumer asks of its thread, coroutine or plain function, runs in place
    assert await asyncio.wait_for(thread.call_thread(coro, 1), 5) == (1, here)
    assert await asyncio.wait_for(thread.call_thread(lambda x: (x, threading.get_ident()), 2), 5) == (2, here)
    done = asyncio.Event()

    async def cast():
        done.set()

    await thread.cast_thread(cast)
    await asyncio.wait_for(done.wait(), 5)
