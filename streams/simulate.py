"""`upsell simulate` on a recording of any length: read once, in order, in memory that is the
engines' state, not the input.

The in-memory backtest (`streams.backtest.run_backtest`) loads every event, sorts them all by
(event time, topic rank, source partition, line) and sorts every decision at the end. A recording
in time order needs neither: events go through a reorder window (`DISORDER_MS` of event time: a
heap released below the latest time read less the window) into the same `PartitionEngine`s in
the same order, and each proposal waits in a second heap only until no engine can decide anything
earlier (the stream time reached, and every engine's next timer), then is written in the
documented order (created_at, customer_id, -priority, proposal_id). The summary is counted as it
goes (`Tally`). The bytes are the in-memory backtest's.

A recording with more disorder than the window (an event older than one already applied), or
with an event more than `max_ahead` older than a line before it (the far-ahead rule needs the
whole recording), is run by the in-memory backtest instead, and the caller is told why
(`Outcome.loaded_whole`). Proposals are written to a spool file first and copied to the
destination at the end, so a fall back never leaves half an output.
"""
from __future__ import annotations

import heapq
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from typing import BinaryIO

import orjson
from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn

from rules.config import Rules
from rules.engine import INPUT_TOPICS, PROPOSAL, STATUS, SUPPRESSED
from rules.timeutil import format_ts, parse_ts
from schemas.validate import event_time_ok
from streams import deadletters
from streams.backtest import (DeadLetter, Engines, Tally, backtest_lines, cycle_gc_paused, read_event,
                              status_order)
from streams.recorded import BadLine, read_numbered

DISORDER_MS = 3_600_000     # how far an event may come after later ones (across topics) and keep its place


class OutOfOrder(Exception):
    """The recording needs the in-memory backtest; the message says why."""


@dataclass
class Outcome:
    tally: Tally
    engines: dict = field(default_factory=dict)      # partition -> PartitionEngine, at the end
    loaded_whole: str | None = None                  # why the in-memory backtest ran instead


def simulate(path: str, rules: Rules, partitions: int, out: BinaryIO, max_ahead: int | None,
             wrong_partition: str = "repartition", progress: bool = False,
             status_out: BinaryIO | None = None) -> Outcome:
    """The proposals of the recording at `path` ("-": stdin, spooled to a temporary file) written
    to `out`, as `backtest_lines(...).proposal_lines()` would give them; with `status_out`, the
    proposal-status records there, as `status_lines()` would."""
    with tempfile.TemporaryDirectory(prefix="upsell-simulate-") as tmp:
        if path == "-":
            path = os.path.join(tmp, "stdin.jsonl")
            with open(path, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        spool, status_spool = os.path.join(tmp, "proposals.jsonl"), os.path.join(tmp, "status.jsonl")
        with cycle_gc_paused():
            try:
                with open(path, "rb") as src, open(spool, "wb") as dst, open(status_spool, "wb") as sdst:
                    outcome = _stream(src, rules, partitions, dst, max_ahead, wrong_partition, progress,
                                      sdst if status_out is not None else None)
            except OutOfOrder as why:
                with open(path, "rb") as src:
                    result = backtest_lines(src.read().splitlines(), rules, partitions, max_ahead, wrong_partition)
                with open(spool, "wb") as dst:
                    dst.write(result.proposal_lines())
                with open(status_spool, "wb") as dst:
                    dst.write(result.status_lines())
                outcome = Outcome(Tally.of(result), result.engines, str(why))
        for name, dst in ((spool, out), (status_spool, status_out)):
            if dst is not None:
                with open(name, "rb") as f:
                    shutil.copyfileobj(f, dst, 1 << 20)
                dst.flush()
    return outcome


def _stream(src, rules: Rules, partitions: int, dst, max_ahead: int | None, wrong_partition: str,
            progress: bool, status_dst=None) -> Outcome:
    tally = Tally()
    engines = Engines(rules, partitions)
    plans, forwarding = rules.plan_by_name, wrong_partition == "repartition"
    rank = {t: i for i, t in enumerate(INPUT_TOPICS)}
    partition = engines.partition
    apply = engines.apply
    # the reorder window, (ts, rank, source, line, topic, key, value) each: a queue while the
    # recording comes in order, a heap from its first line out of order on
    window: deque = deque()
    held: list = []
    in_order = True
    decided: list = []            # (order, seq, created second, proposal): waiting to be written
    seq = 0
    latest = None                 # the latest event time read (valid events)
    last_released = None          # the last event applied (its line makes each one's order unique)
    events = 0
    end_ts = None                 # the latest event time in range of any event: where the stream ends
    write = dst.write

    changed: list = []            # (order, seq, at second, status record): waiting to be written
    measure = tally.measure

    def route(out: list) -> None:
        nonlocal seq
        for kind, p in out:
            measure.add(kind, p)
            seq += 1
            if kind == PROPOSAL:
                tally.proposed[(p["trigger"], p["kind"])] += 1
                heapq.heappush(decided, ((p["created_at"], p["customer_id"], -p["priority"], p["proposal_id"]),
                                         seq, parse_ts(p["created_at"]) // 1000, p))
            elif kind == SUPPRESSED:
                tally.suppressed[(p["trigger"], p["kind"], p["suppressed"]["reason"])] += 1
            elif kind == STATUS and status_dst is not None:
                heapq.heappush(changed, (status_order(p), seq, parse_ts(p["at"]) // 1000, p))

    def flush(before_ms: int | None) -> None:
        """Write the records no engine can precede any more: made in a second before that of
        `before_ms` (their time texts sort as time only across whole seconds), all with None."""
        limit = None if before_ms is None else before_ms // 1000
        for waiting, target in ((decided, write), (changed, status_dst and status_dst.write)):
            while waiting and (limit is None or waiting[0][2] < limit):
                target(orjson.dumps(heapq.heappop(waiting)[3]) + b"\n")

    def release(item) -> None:
        nonlocal last_released
        ts, _, _, _, topic, key, value = item
        out = apply(topic, key, ts, value)
        if out:
            route(out)
        last_released = item
        if (decided and decided[0][2] < ts // 1000) or (changed and changed[0][2] < ts // 1000):
            timer = engines.next_timer()
            flush(ts if timer is None or timer > ts else timer)

    shown = Shown(progress)
    for item in read_numbered(enumerate(lines_of(src), 1)):
        if isinstance(item, BadLine):
            tally.bad(item)
            continue
        ev = item
        if (end_ts is None or ev.ts > end_ts) and event_time_ok(ev.ts):
            end_ts = ev.ts
        if ev.topic not in rank:
            tally.dead(DeadLetter(ev.line, ev.topic, ev.key, f"unknown topic {ev.topic!r}"))
            continue
        try:
            value = read_event(ev, plans, partitions, forwarding)
        except Exception as exc:    # noqa: BLE001 -- as the worker: any bytes are a dead letter
            tally.dead(DeadLetter(ev.line, ev.topic, ev.key, deadletters.reason(exc)[0]))
            continue
        if max_ahead is not None and latest is not None and latest > ev.ts + max_ahead:
            raise OutOfOrder(f"line {ev.line} is more than UPSELL_MAX_AHEAD_MS older than a line before it")
        source = -1
        if ev.partition is not None and ev.partition != partition(ev.key):
            source = ev.partition
        item = (ev.ts, rank[ev.topic], source, ev.line, ev.topic, ev.key, value)
        if last_released is not None and item < last_released:
            raise OutOfOrder(f"line {ev.line} is more than {DISORDER_MS // 60_000} minutes of event time "
                             f"older than a line before it")
        if in_order and (not window or item > window[-1]):
            window.append(item)         # a recording in time order: a queue, no heap
        else:
            if in_order:
                in_order = False
                held.extend(window)
                window.clear()
                heapq.heapify(held)
            heapq.heappush(held, item)
        events += 1
        if latest is None or ev.ts > latest:
            latest = ev.ts
            horizon = latest - DISORDER_MS      # what is older is released
        if in_order:
            while window and window[0][0] < horizon:
                release(window.popleft())
        else:
            while held and held[0][0] < horizon:
                release(heapq.heappop(held))
        if progress and not ev.line & 4095:
            shown.now(ev.line, latest, events)
    while window:
        release(window.popleft())
    while held:
        release(heapq.heappop(held))
    route(engines.end(end_ts))
    flush(None)
    tally.events = events
    tally.late_events, tally.outcomes = engines.totals()
    shown.done()
    return Outcome(tally, engines.by_partition)


def lines_of(src: BinaryIO, size: int = 1 << 22):
    """A file's lines as `bytes.splitlines` cuts the whole of it, read in blocks of `size`
    bytes (cheaper per line than reading a line at a time). A block is cut after its last
    \\n, so a \\r\\n is never split; the rest goes with the next block."""
    rest = b""
    while True:
        block = src.read(size)
        if not block:
            break
        data = rest + block
        cut = data.rfind(b"\n") + 1
        if cut:
            yield from data[:cut].splitlines()
        rest = data[cut:]
    if rest:
        yield from rest.splitlines()


class Shown:
    """Progress on a terminal (lines read, stream time, events/s), nothing in a pipe; updated
    at most every 0.2 s (the caller looks every 4,096 lines)."""

    def __init__(self, enabled: bool):
        self.bar = Progress(TextColumn("simulate: {task.fields[lines]:,} lines, stream time {task.fields[at]}, "
                                       "{task.fields[rate]:,.0f} events/s"), TimeElapsedColumn(),
                            console=Console(file=sys.stderr), transient=True, disable=not enabled)
        self.task = self.bar.add_task("simulate", lines=0, at="-", rate=0.0)
        self.enabled, self.began, self.shown = enabled, time.monotonic(), 0.0
        if enabled:
            self.bar.start()

    def now(self, line: int, at: int | None, events: int) -> None:
        t = time.monotonic()
        if t - self.shown >= 0.2:
            self.shown = t
            self.bar.update(self.task, lines=line, at=format_ts(at)[:16] if at is not None else "-",
                            rate=events / max(t - self.began, 1e-9))

    def done(self) -> None:
        if self.enabled:
            self.bar.stop()
