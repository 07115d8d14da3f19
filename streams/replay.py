"""`upsell replay FILE`: publish a recorded stream with its keys and timestamps.

Events go out in event-time order, as fast as possible or paced at `speed` x
event time. Watermark records (header `upsell-watermark`, empty value) go to
every input topic-partition now and then and once at the end, so the workers
release their reorder buffers and fire every timer due by the last event:
the proposals are then exactly those of `upsell simulate` on the same file.
An event the backtest drops as far ahead of a later record on its topic-partition
(`streams.backtest.far_ahead`) is sent just before that record, so the worker
sees the two in the recording's order and drops it too.
"""
from __future__ import annotations

import asyncio
import sys
import time

from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rules.engine import INPUT_TOPICS
from schemas.validate import event_time_ok
from streams.backtest import DEFAULT_MAX_AHEAD_MS, ahead_of_later, end_of_stream
from streams.kafka import client_kwargs, ensure_topics
from streams.recorded import load_sorted

WATERMARK_HEADER = "upsell-watermark"
# every topic of the app but the table's changelog (Faust makes that): co-partitioned
TOPICS = (*INPUT_TOPICS, "repartition", "proposals", "proposals.suppressed", "proposal-status",
          "dead-letters")


async def send_markers(producer: AIOKafkaProducer, prefix: str, partitions: int, ts: int) -> None:
    """A watermark record at `ts` to every input topic-partition: no later event is older."""
    header = [(WATERMARK_HEADER, str(ts).encode())]
    for topic in INPUT_TOPICS:
        for p in range(partitions):
            await producer.send(prefix + topic, value=b"", partition=p, timestamp_ms=ts, headers=header)


async def send_event(producer: AIOKafkaProducer, prefix: str, ev) -> None:
    await producer.send(prefix + ev.topic, value=ev.raw, partition=ev.partition,
                        key=ev.key.encode() if ev.key is not None else None, timestamp_ms=ev.ts)


async def replay(lines, bootstrap: str, partitions: int, prefix: str = "", speed: float | None = None,
                 marker_every: int = 2000, progress: bool = True, out=sys.stderr, security=None,
                 rules=None, max_ahead: int | None = DEFAULT_MAX_AHEAD_MS, loaded=None) -> dict:
    """`loaded`: `load_sorted(lines)` when the caller has it already (then `lines` is not read)."""
    events, bad = loaded if loaded is not None else load_sorted(lines)
    skipped = [e for e in events if e.topic not in INPUT_TOPICS]
    events = [e for e in events if e.topic in INPUT_TOPICS]
    before: dict[int, list] = {}        # line -> the far-ahead events sent just before it
    if max_ahead is not None:
        ahead = ahead_of_later(events, rules, partitions, max_ahead)
        if ahead:
            for e in events:
                if e.line in ahead:
                    before.setdefault(ahead[e.line][0], []).append(e)
            events = [e for e in events if e.line not in ahead]
    await ensure_topics(bootstrap, [prefix + t for t in TOPICS], partitions, security)
    producer = AIOKafkaProducer(**client_kwargs(bootstrap, security), linger_ms=10, max_batch_size=256 * 1024)
    await producer.start()

    started, shown = time.monotonic(), 0.0
    bar = Progress(TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} ev/s"),
                   TimeElapsedColumn(), console=Console(file=out), disable=not progress)
    task = bar.add_task("replay", total=len(events), rate="0")
    bar.start()
    try:
        first = next((e.ts for e in events if event_time_ok(e.ts)), 0)
        last = None         # the latest event time in range sent
        for i, ev in enumerate(events, 1):
            ok = event_time_ok(ev.ts)       # else a dead letter for the worker: no stream time
            if speed and ok:
                delay = (ev.ts - first) / 1000 / speed - (time.monotonic() - started)
                if delay > 0:
                    await asyncio.sleep(delay)      # pacing to event time is the point here
            for early in before.get(ev.line, ()):
                await send_event(producer, prefix, early)
            try:
                await send_event(producer, prefix, ev)
            except TypeError:         # an object deeper than JSON can be written again: unreadable
                bad.append(ev)
                continue
            if ok:
                last = ev.ts
            if i % marker_every == 0 and last is not None:
                await send_markers(producer, prefix, partitions, last)
            now = time.monotonic()
            if progress and (now - shown > 0.2 or i == len(events)):
                shown = now
                bar.update(task, completed=i, rate=f"{i / max(now - started, 1e-9):,.0f}")
        if last is not None:
            await send_markers(producer, prefix, partitions, end_of_stream(last))
        await producer.flush()
    finally:
        bar.stop()
        await producer.stop()
    return {"sent": len(events) + sum(map(len, before.values())), "unreadable": len(bad), "unknown_topic": len(skipped),
            "seconds": time.monotonic() - started}
