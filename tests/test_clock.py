"""`streams.clock.LocalClock`: when the live worker moves its stream time (plain integers)."""
from __future__ import annotations

import asyncio

import pytest

from streams.clock import LocalClock, ManualClock
from streams.settings import Settings, event_loop_name, use_event_loop


def _clock(lateness=20, tick=1000, resolution=5):
    return LocalClock(ManualClock(0), lateness, tick, resolution)


def test_the_next_move_is_the_tick_unless_a_waiting_event_falls_due_before():
    c = _clock()
    assert c.next_move(10_000, []) == (11_000, True)
    assert c.next_move(10_000, [None, None]) == (11_000, True)
    # stream time (wall - lateness) passes an event at 10_100 once the wall clock is at 10_121
    assert c.next_move(10_000, [None, 10_500, 10_100]) == (10_121, False)
    assert c.next_move(10_000, [10_990]) == (11_000, True)        # due after the tick: the tick
    # an event already due waits for the resolution, not less
    assert c.next_move(10_000, [9_000]) == (10_005, False)


def test_a_tick_shorter_than_the_resolution_is_the_resolution():
    c = _clock(tick=1, resolution=5)
    assert c.next_move(100, []) == (105, True)


def test_an_event_that_waits_brings_the_next_move_forward_not_back():
    c = _clock()
    c.expect(50)                      # not running yet: nothing planned, nothing to change
    assert c.due is None and not c._wake.is_set()
    c.last, c.due = 10_000, 11_000    # moved at 10_000, the next tick planned at 11_000
    c.expect(10_300)
    assert c.due == 10_321 and c._wake.is_set()
    c._wake.clear()
    c.expect(10_600)                  # later than the move planned: no change
    assert c.due == 10_321 and not c._wake.is_set()
    c.expect(9_000)                   # already due: at the resolution after the last move
    assert c.due == 10_005 and c._wake.is_set()


async def test_a_tick_does_not_hold_back_an_event_that_falls_due_just_after_it():
    """The resolution spaces the moves made for waiting events; a tick is not one of them."""
    wall = ManualClock(9_000)
    c = LocalClock(wall, 20, 1000, 5)
    c.due = 9_000
    assert await c.step(_no_op, lambda: [])         # a move for an event that fell due; next, a tick
    assert c.last == 9_000 and c.due == 10_000 and c.ticking
    wall.advance(999)
    assert not await c.step(_no_op, lambda: [])     # nothing due yet
    wall.advance(1)
    assert await c.step(_no_op, lambda: [])         # the tick
    assert c.last == 9_000 and c.due == 11_000 and c.ticking
    c.expect(9_981)                                 # falls due at 10_002, 2 ms after the tick
    assert c.due == 10_002 and not c.ticking
    wall.advance(2)
    assert await c.step(_no_op, lambda: [])
    assert c.last == 10_002
    c.expect(9_983)                                 # due at 10_004: within the resolution of 10_002
    assert c.due == 10_007


async def _no_op(now):
    pass


def test_the_consumer_thread_setting_is_checked(monkeypatch):
    monkeypatch.delenv("UPSELL_CONSUMER_THREAD", raising=False)
    assert Settings.from_env().consumer_thread is False
    monkeypatch.setenv("UPSELL_CONSUMER_THREAD", "1")
    assert Settings.from_env().consumer_thread is True
    for bad in ("yes", "true", "2"):
        monkeypatch.setenv("UPSELL_CONSUMER_THREAD", bad)
        with pytest.raises(ValueError, match=f"UPSELL_CONSUMER_THREAD must be 0 or 1, got '{bad}'"):
            Settings.from_env()


def test_the_event_loop_setting_is_checked_and_applied(monkeypatch):
    monkeypatch.delenv("UPSELL_EVENT_LOOP", raising=False)
    assert Settings.from_env().event_loop == "uvloop"
    monkeypatch.setenv("UPSELL_EVENT_LOOP", "aio")
    assert Settings.from_env().event_loop == "aio"
    monkeypatch.setenv("UPSELL_EVENT_LOOP", "tokio")
    with pytest.raises(ValueError, match="UPSELL_EVENT_LOOP must be 'uvloop' or 'aio', got 'tokio'"):
        Settings.from_env()
    policy = asyncio.get_event_loop_policy()
    try:
        use_event_loop("uvloop")
        loop = asyncio.new_event_loop()
        assert type(loop).__module__.startswith("uvloop") and event_loop_name(loop) == "uvloop"
        loop.close()
        use_event_loop("aio")
        loop = asyncio.new_event_loop()
        assert isinstance(loop, asyncio.BaseEventLoop) and event_loop_name(loop) == "aio"
        loop.close()
        with pytest.raises(ValueError, match="unknown event loop 'tokio'"):
            use_event_loop("tokio")
    finally:
        asyncio.set_event_loop_policy(policy)


@pytest.mark.parametrize("ticks, back, after", [
    (0, -3_600_000, [6_400_000]),
    (3, -60, [10_000_030, 10_000_060, 10_000_090, 10_000_030]),
])
async def test_a_wall_clock_set_back_does_not_stop_the_clock(ticks, back, after):
    """After an NTP step back the clock moves at once and plans from the new time (the next move
    at most a tick away, not an hour ahead); also when only ticks came since the last move for an
    event, and the step is smaller than they are (ticks do not count for the resolution, but they
    count as moves)."""
    wall = ManualClock(10_000_000)
    c = LocalClock(wall, lateness_ms=0, tick_ms=30, resolution_ms=1)
    moved, seen = asyncio.Event(), []

    async def move(now):
        seen.append(now)
        moved.set()
    task = asyncio.create_task(c.run(move, lambda: []))
    try:
        await asyncio.wait_for(moved.wait(), 5)         # the first move, at the start
        for _ in range(ticks):
            moved.clear()
            wall.advance(30)
            await asyncio.wait_for(moved.wait(), 5)
        moved.clear()
        wall.advance(back)
        await asyncio.wait_for(moved.wait(), 5)
    finally:
        task.cancel()
    assert seen == [10_000_000, *after] and c.last == after[-1] and c.due == after[-1] + 30
