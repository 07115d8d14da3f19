"""Injectable time. The rules never read a clock: stream time comes from events.

Only the live worker's clock (`LocalClock`) and its batch-end timer read the
wall clock, through a `Clock`, so tests and replays can drive it.
"""
from __future__ import annotations

import asyncio
import time


class Clock:
    def now_ms(self) -> int:
        return int(time.time() * 1000)


class ManualClock(Clock):
    def __init__(self, now_ms: int = 0):
        self.t = now_ms

    def now_ms(self) -> int:
        return self.t

    def advance(self, ms: int) -> None:
        self.t += ms


WALL = Clock()


class LocalClock:
    """Live stream time on one worker (`UPSELL_CLOCK=wall`): when to move it, and the loop that does.

    Stream time is the wall clock minus the lateness. Moving it (`move`, agents.ingest.Ingest.advance)
    applies the events it passes and fires the timers; it is moved once every tick interval, and
    besides at the moment the earliest event or timer waiting in a partition engine falls due
    (its time plus the lateness has passed), so a decision leaves as soon as the lateness allows,
    not up to a tick later. Never twice within `resolution_ms` for waiting events: under load
    they fall due every fraction of a millisecond, and each move walks every engine the worker
    holds. A tick does not count there (the tick interval spaces the ticks): a tick just before an
    event falls due would otherwise hold that event back by the resolution.

    `expect(event_ms)` is told of each event that waits, so a clock sleeping towards its next tick
    wakes for it. The wall clock is `clock` (injectable); the sleeping is the event loop's.
    """

    def __init__(self, clock: Clock, lateness_ms: int, tick_ms: int, resolution_ms: int):
        self.clock, self.lateness_ms = clock, lateness_ms
        self.tick_ms, self.resolution_ms = max(tick_ms, resolution_ms), resolution_ms
        self.due: int | None = None     # wall ms of the next move, once running
        self.last: int | None = None    # wall ms of the last move that was not a tick
        self.moved: int | None = None   # wall ms of the last move
        self.ticking = False            # the move planned (`due`) is a tick
        self.moves = 0
        self._wake = asyncio.Event()    # set: the next move was brought forward

    def next_move(self, now: int, dues) -> tuple[int, bool]:
        """The wall ms of the next move after one at `now`, given the event times waiting
        (`PartitionEngine.next_due` of each engine; None for an engine with nothing waiting), and
        whether that move is a tick."""
        at, tick = now + self.tick_ms, True
        for due in dues:
            if due is not None and due + self.lateness_ms + 1 < at:
                at, tick = due + self.lateness_ms + 1, False    # stream time then passes `due`
        return max(at, (now if self.last is None else self.last) + self.resolution_ms), tick

    def expect(self, event_ms: int) -> None:
        """An event at `event_ms` waits for stream time: move once it can pass it, if that is
        before the next move planned."""
        if self.due is None:        # not running
            return
        at = event_ms + self.lateness_ms + 1
        if self.last is not None and at < self.last + self.resolution_ms:
            at = self.last + self.resolution_ms
        if at < self.due:
            self.due, self.ticking = at, False
            self._wake.set()

    async def step(self, move, dues) -> bool:
        """If a move is due at the clock's time, `await move(now_ms)` and plan the next from
        `dues()`; True if it moved."""
        now = self.clock.now_ms()
        # a wall clock set back (NTP) moves at once: stream time stays where it was (it never
        # goes back) and the next moves are planned from the new time, not an hour ahead
        stepped_back = self.moved is not None and now < self.moved
        if now < self.due and not stepped_back:
            return False
        if stepped_back or not self.ticking:
            self.last = now
        self.moved = now
        self.moves += 1
        await move(now)
        self.due, self.ticking = self.next_move(now, dues())
        return True

    async def run(self, move, dues) -> None:
        """Forever: a `step` at each moment due, sleeping in between."""
        loop = asyncio.get_running_loop()
        wake = self._wake
        self.due = self.clock.now_ms()
        while True:
            await self.step(move, dues)
            wake.clear()
            # slept on the event loop's own (monotonic) clock, never longer than a tick
            timer = loop.call_later(min(self.due - self.clock.now_ms(), self.tick_ms) / 1000, wake.set)
            try:
                await wake.wait()
            finally:
                timer.cancel()
