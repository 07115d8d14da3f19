"""streams.transport fix 5: the fetcher's per-record `wait_first`, run in place."""
from __future__ import annotations

import asyncio
import gc
import warnings

import mode
import pytest

from streams.transport import App, InPlaceWaitFirst, RefillAtHalf, _Consumer


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
