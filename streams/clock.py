"""Injectable time. The rules never read a clock: stream time comes from events.

Only the live ticker reads the wall clock, through a `Clock`, so tests and
replays can drive it.
"""
from __future__ import annotations

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
