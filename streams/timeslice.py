"""`TimeSlice`: cooperative scheduling for the loops over records that share the worker's one
event loop (the inbox's delivery, a large fetch's partitions, the read model's batches)."""
from __future__ import annotations

import asyncio
import time


class TimeSlice:
    """`pause` lets the event loop run its other callbacks (the clock's moves, the broker's
    acknowledgements, the fetcher) once `seconds` of work have passed since the last pause, so no
    batch holds them for longer than that."""

    SECONDS = 0.002

    def __init__(self, seconds: float | None = None):
        self.seconds = self.SECONDS if seconds is None else seconds
        self.end = time.monotonic() + self.seconds

    async def pause(self) -> None:
        if time.monotonic() >= self.end:
            await asyncio.sleep(0)
            self.end = time.monotonic() + self.seconds
