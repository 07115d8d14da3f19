"""Offline backtest: the worker's rules over a recorded stream, no broker.

Events are read, sorted by event time, routed to the partition Kafka's
default partitioner would choose, validated exactly as the worker validates
them and fed to the same `PartitionEngine`. The output is the proposals the
live worker emits for the same recording, byte for byte. This loads the whole
recording; `streams.simulate` gives the same bytes reading it once, in order.
"""
from __future__ import annotations

import gc
import multiprocessing
import re
import traceback
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from io import StringIO
from typing import Iterable

import orjson
from rich import box
from rich.console import Console
from rich.table import Table

from rules.config import Rules
from rules.engine import INPUT_TOPICS, PROPOSAL, STATUS, SUPPRESSED, PartitionEngine
from rules.timeutil import format_ts
from schemas.validate import check_event_time, event_time_ok
from streams import deadletters
from streams.measure import Measure, table as measure_table
from streams.partitioning import partition_for, wrong_partition_error
from streams.recorded import BadLine, RecordedEvent, decode_event, load_sorted


DEFAULT_MAX_AHEAD_MS = 86_400_000     # UPSELL_MAX_AHEAD_MS's default


@dataclass
class DeadLetter:
    line: int
    topic: str
    key: str | None
    error: str


@dataclass
class BacktestResult:
    proposals: list[dict] = field(default_factory=list)
    suppressed: list[dict] = field(default_factory=list)
    statuses: list[dict] = field(default_factory=list)        # proposal-status records
    dead_letters: list[DeadLetter] = field(default_factory=list)
    bad_lines: list[BadLine] = field(default_factory=list)
    events: int = 0
    late_events: int = 0
    outcomes: Counter = field(default_factory=Counter)
    engines: dict = field(default_factory=dict)      # partition -> PartitionEngine, at the end

    def proposal_lines(self) -> bytes:
        return b"".join(orjson.dumps(p) + b"\n" for p in self.proposals)

    def status_lines(self) -> bytes:
        return b"".join(orjson.dumps(r) + b"\n" for r in self.statuses)


class Engines:
    """A backtest's partition engines, each made when its first event comes: an event goes to the
    engine of the partition its key hashes to, and is applied at once (`apply_sorted`): the
    caller hands them over in the order they sort into."""

    def __init__(self, rules: Rules, partitions: int):
        self.rules, self.partitions = rules, partitions
        self.by_partition: dict[int, PartitionEngine] = {}
        self._partition_of: dict[str, int] = {}

    def partition(self, key: str) -> int:
        p = self._partition_of.get(key)
        if p is None:
            p = self._partition_of[key] = partition_for(key, self.partitions)
        return p

    def apply(self, topic: str, key: str, ts: int, value: dict) -> list:
        p = self._partition_of.get(key)
        if p is None:
            p = self.partition(key)
        eng = self.by_partition.get(p)
        if eng is None:
            eng = self.by_partition[p] = PartitionEngine(self.rules, p)
        return eng.apply_sorted(topic, key, ts, value)

    def end(self, last_ts: int | None) -> list:
        """The stream's end after `last_ts`: every engine's timers due by then fire, by partition."""
        out: list = []
        if last_ts is not None:
            for p in sorted(self.by_partition):
                out += self.by_partition[p].tick(end_of_stream(last_ts))
        return out

    def next_timer(self) -> int | None:
        """The earliest timer of any engine (a superseded one too): nothing is decided before it
        but by an event."""
        dues = [e.timers[0][0] for e in self.by_partition.values() if e.timers]
        return min(dues) if dues else None

    def totals(self) -> tuple[int, Counter]:
        """Late events and outcomes counted by every engine."""
        late, outcomes = 0, Counter()
        for eng in self.by_partition.values():
            late += eng.stats["late_events"]
            outcomes.update(eng.stats["outcomes"])
        return late, outcomes


def run_backtest(events: list[RecordedEvent], rules: Rules, partitions: int,
                 bad_lines: list[BadLine] | None = None, max_ahead: int | None = None,
                 wrong_partition: str = "repartition", ahead: dict | None = None,
                 end_ts: int | None = None) -> BacktestResult:
    """`events` must be in event-time order (see `load_sorted`); `max_ahead` (ms) drops an event
    far ahead of a later record on its topic-partition, as the worker does (`far_ahead`). An
    event recorded on a partition its key does not hash to is applied where it hashes, as the
    worker forwards it (`wrong_partition="repartition"`), or is a dead letter ("dead-letter").
    A part of a recording (`backtest_lines` with jobs) comes with the whole recording's
    `ahead` (`ahead_of_later`) and the time its stream ends (`end_ts`, see `last_event_time`)."""
    result = BacktestResult(bad_lines=list(bad_lines or []))
    engines = Engines(rules, partitions)
    plans = rules.plan_by_name
    collect = {PROPOSAL: result.proposals.append, SUPPRESSED: result.suppressed.append,
               STATUS: result.statuses.append}
    rank = {t: i for i, t in enumerate(INPUT_TOPICS)}
    last_ts = last_event_time(events) if end_ts is None else end_ts

    def route(out):
        for kind, p in out:
            collect[kind](p)

    valid, forwarded = [], False
    for ev in events:
        if ev.topic not in rank:
            result.dead_letters.append(DeadLetter(ev.line, ev.topic, ev.key, f"unknown topic {ev.topic!r}"))
            continue
        try:
            value = read_event(ev, plans, partitions, wrong_partition == "repartition")
        except Exception as exc:    # noqa: BLE001 -- as the worker: any bytes are a dead letter
            result.dead_letters.append(DeadLetter(ev.line, ev.topic, ev.key, deadletters.reason(exc)[0]))
            continue
        # the partition it was produced to when it is forwarded from there, else -1: a direct
        # event goes before a forwarded one of the same time and topic, as the worker applies them
        source = ev.partition if ev.partition is not None and ev.partition != partition_for(
            ev.key, partitions) else -1
        if source >= 0:
            forwarded = True
        valid.append((ev.ts, rank[ev.topic], source, ev.topic, ev.key, value, ev.line))
    if ahead is not None:
        if ahead:
            for v in valid:
                if v[6] in ahead:
                    result.dead_letters.append(DeadLetter(v[6], v[3], v[4], ahead_error(v[0], ahead[v[6]][1])))
            valid = [v for v in valid if v[6] not in ahead]
    elif max_ahead is not None and _out_of_order(valid, max_ahead):
        ahead = far_ahead([(v[6], v[3], engines.partition(v[4]), v[0]) for v in valid if v[2] < 0], max_ahead)
        if ahead:
            for v in valid:
                if v[6] in ahead:
                    result.dead_letters.append(DeadLetter(v[6], v[3], v[4], ahead_error(v[0], ahead[v[6]][1])))
            valid = [v for v in valid if v[6] not in ahead]
            last_ts = last_event_time([ev for ev in events if ev.line not in ahead])
    # stable: a topic's events keep their order (see apply_sorted)
    valid.sort(key=_TIME_RANK_SOURCE if forwarded else _TIME_RANK)
    result.events = len(valid)
    apply = engines.apply
    for ts, _, _, topic, key, value, _ in valid:
        out = apply(topic, key, ts, value)
        if out:
            route(out)
    route(engines.end(last_ts))
    result.late_events, result.outcomes = engines.totals()
    result.engines = engines.by_partition
    result.proposals.sort(key=_order)
    result.suppressed.sort(key=_order)
    result.statuses.sort(key=status_order)
    result.dead_letters.sort(key=_LINE)
    return result


_LINE = attrgetter("line")


_TIME_RANK = itemgetter(0, 1)
_TIME_RANK_SOURCE = itemgetter(0, 1, 2)


def read_event(ev: RecordedEvent, plans, partitions: int, forwarded: bool = True) -> dict:
    """A recorded event's value, validated as the worker validates the record (raises if it is
    a dead letter there; with `forwarded` False, also when it is not on its key's partition)."""
    check_event_time(ev.ts)
    value = decode_event(ev.topic, ev.key, ev.raw if ev.obj is None else b"", plans, ev.obj)
    if ev.partition is not None and not forwarded:   # produced to a named partition: the worker's check
        expected = partition_for(ev.key, partitions)
        if ev.partition != expected:
            raise ValueError(wrong_partition_error(ev.partition, expected, partitions))
    return value


def far_ahead(records: list[tuple[int, str, int, int]], max_ahead: int) -> dict[int, tuple[int, int]]:
    """The records the worker drops as far ahead (`rules.engine`): `records` are (line, topic,
    partition, ts) of valid events, in any order; a record is dropped when a record after it in
    line order (the order produced) on the same topic-partition is more than `max_ahead` ms
    older. Returns {line: (line, ts) of the first such later record}."""
    groups: dict[tuple[str, int], list] = defaultdict(list)
    for line, topic, partition, ts in records:
        groups[(topic, partition)].append((line, ts))
    dropped: dict[int, tuple[int, int]] = {}
    for items in groups.values():
        items.sort()
        kept: list[tuple[int, int]] = []    # earlier records not dropped, in line order
        top = None                          # the latest ts among them
        for line, ts in items:
            if top is not None and top > ts + max_ahead:
                limit = ts + max_ahead
                for old_line, old_ts in kept:
                    if old_ts > limit:
                        dropped[old_line] = (line, ts)
                kept = [(ln, t) for ln, t in kept if t <= limit]
                top = max((t for _, t in kept), default=None)
            kept.append((line, ts))
            if top is None or ts > top:
                top = ts
    return dropped


def ahead_of_later(events: list[RecordedEvent], rules: Rules | None, partitions: int,
                   max_ahead: int) -> dict[int, tuple[int, int]]:
    """`far_ahead` of a recording's events (in time order): what the worker drops when they are
    produced in line order. Validated only when some event is out of line order."""
    lines = [e.line for e in events]
    if all(a < b for a, b in zip(lines, lines[1:])):
        return {}
    if rules is None:
        from rules.config import load_rules
        rules = load_rules()
    plans, valid = rules.plan_by_name, []
    for ev in events:
        try:
            read_event(ev, plans, partitions)
        except Exception:   # noqa: BLE001 -- a dead letter in the worker: not part of the order
            continue
        p = partition_for(ev.key, partitions)
        if ev.partition is None or ev.partition == p:     # forwarded events wait elsewhere
            valid.append((ev.line, ev.topic, p, ev.ts))
    return far_ahead(valid, max_ahead)


def _out_of_order(valid: list, max_ahead: int) -> bool:
    """Whether any record of `valid` (in time order, each with its line last) is more than
    `max_ahead` older than a record before it in line order: a cheap test for `far_ahead`."""
    lines = [v[-1] for v in valid]   # (direct and forwarded alike: a cheap test)
    if all(a < b for a, b in zip(lines, lines[1:])):      # recorded in time order
        return False
    top = None
    for v in sorted(valid, key=itemgetter(-1)):
        ts = v[0]
        if top is not None and top > ts + max_ahead:
            return True
        if top is None or ts > top:
            top = ts
    return False


def ahead_error(ts: int, later_ts: int) -> str:
    """The dead-letter reason of an event dropped as far ahead."""
    return (f"event time {format_ts(ts)} is more than UPSELL_MAX_AHEAD_MS ahead of a later record on its "
            f"topic-partition ({format_ts(later_ts)}): a producer's clock is wrong")


def last_event_time(events: list[RecordedEvent]) -> int | None:
    """The latest event time in range (`check_event_time`) of events in time order: where a
    recording ends. An event out of range is a dead letter, and does not move stream time."""
    for ev in reversed(events):
        if event_time_ok(ev.ts):
            return ev.ts
    return None


def end_of_stream(last_ts: int) -> int:
    """The final watermark of a recording: every event, and every timer due by its last moment."""
    return last_ts + 1


def _order(p: dict):
    return (p["created_at"], p["customer_id"], -p["priority"], p["proposal_id"])


_STATE_RANK = {"declined": 0, "withdrawn": 1, "converted": 2, "expired": 3}


def status_order(r: dict):
    """proposal-status records in the order the backtest writes them."""
    return (r["at"], r["customer_id"], r["proposal_id"], _STATE_RANK[r["status"]])


def backtest_lines(lines: Iterable[bytes], rules: Rules, partitions: int,
                   max_ahead: int | None = DEFAULT_MAX_AHEAD_MS, wrong_partition: str = "repartition",
                   jobs: int = 1) -> BacktestResult:
    """A recording's lines -> the backtest's result (`upsell simulate`, the demo, the benchmark).
    With `jobs` > 1 the partitions are split among that many processes: partitions share no state,
    so the result is the same (without `engines`)."""
    with cycle_gc_paused():
        if jobs > 1 and partitions > 1:
            return _run_in_jobs(lines, rules, partitions, max_ahead, wrong_partition, min(jobs, partitions))
        events, bad = load_sorted(lines)
        return run_backtest(events, rules, partitions, bad, max_ahead, wrong_partition)


_JOBS: dict = {}      # the recording's parts, for the forked processes of `_run_in_jobs` (set while it runs)
# a recording line's key, read without parsing the line (one that does not match is parsed)
_KEY = re.compile(rb'"key"\s*:\s*"([^"\\]*)"')


def _run_in_jobs(lines, rules, partitions, max_ahead, wrong_partition, jobs) -> BacktestResult:
    """Each process reads the lines of the partitions p with p % jobs == its index (a line's
    partition is its key's), validates and applies them. The far-ahead rule is per
    topic-partition, so each process applies it to its own; the stream's end, where the last
    timers fire, is the whole recording's: each process sends the latest event time it read,
    and goes on with the latest of all."""
    parts: list[list] = [[] for _ in range(jobs)]
    partition_of: dict = {}
    for n, line in enumerate(lines, 1):
        m = _KEY.search(line)
        key = m.group(1) if m is not None and line.find(b'"value"', 0, m.start()) < 0 else _key_of(line)
        p = partition_of.get(key)
        if p is None:
            p = partition_of[key] = (partition_for(key.decode("utf-8", "replace"), partitions)
                                     if isinstance(key, bytes) else 0)
        parts[p % jobs].append((n, line))
    context = multiprocessing.get_context("fork")     # the parts are inherited, not pickled
    _JOBS.update(parts=parts, rules=rules, partitions=partitions, wrong=wrong_partition, max_ahead=max_ahead)
    try:
        pipes = [context.Pipe() for _ in range(jobs)]
        procs = [context.Process(target=_run_part, args=(i, child), daemon=True)
                 for i, (_, child) in enumerate(pipes)]
        for proc in procs:
            proc.start()
        lasts = [_receive(conn) for conn, _ in pipes]
        end = max((t for t in lasts if t is not None), default=None)
        for conn, _ in pipes:
            conn.send(end)
        results = [_receive(conn) for conn, _ in pipes]
        for proc in procs:
            proc.join()
    finally:
        _JOBS.clear()
    merged = BacktestResult()
    for r in results:
        merged.proposals += r.proposals
        merged.suppressed += r.suppressed
        merged.statuses += r.statuses
        merged.dead_letters += r.dead_letters
        merged.bad_lines += r.bad_lines
        merged.events += r.events
        merged.late_events += r.late_events
        merged.outcomes.update(r.outcomes)
    merged.proposals.sort(key=_order)
    merged.suppressed.sort(key=_order)
    merged.statuses.sort(key=status_order)
    merged.dead_letters.sort(key=_LINE)
    merged.bad_lines.sort(key=_LINE)
    return merged


def _key_of(line: bytes):
    """The key of a line `_KEY` did not read (escaped, a number, null, after the value, or not
    JSON), as `streams.recorded` reads it: bytes, or None (partition 0: a keyless or unreadable
    line is a dead letter or a bad line anyway)."""
    try:
        key = orjson.loads(line).get("key")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return str(key).encode() if isinstance(key, (str, int)) else None


def _receive(conn):
    got = conn.recv()
    if isinstance(got, _Failed):
        raise RuntimeError(f"a backtest process failed:\n{got.text}")
    return got


@dataclass
class _Failed:
    text: str


def _run_part(index: int, conn) -> None:
    """One process of `_run_in_jobs`: its lines read and sorted, the latest event time sent, the
    stream's end received, its partitions run."""
    try:
        j = _JOBS
        events, bad = load_sorted((), j["parts"][index])
        ahead = ahead_of_later(events, j["rules"], j["partitions"], j["max_ahead"]) if j["max_ahead"] else {}
        conn.send(last_event_time([e for e in events if e.line not in ahead] if ahead else events))
        end = conn.recv()
        result = run_backtest(events, j["rules"], j["partitions"], bad, None, j["wrong"], ahead=ahead, end_ts=end)
        result.engines = {}
        conn.send(result)
    except BaseException:       # noqa: BLE001 -- handed to the parent, which raises it
        conn.send(_Failed(traceback.format_exc()))


@contextmanager
def cycle_gc_paused():
    """Python's cyclic garbage collector, paused. Loading and backtesting a recording allocate a
    few containers per event, and every few hundred allocations the collector walks the young
    ones, and now and then every container alive (the whole recording and every customer); yet
    they make no reference cycles (measured: after a backtest with the collector off,
    `gc.collect()` found nothing, with 49 or 1,330 dead letters), so that walking frees nothing.
    Memory is freed by reference counting as before. Measured on the `--quick` stream, best of 5:
    45-48k events/s with the collector on, 52-53k with it off."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ---------------------------------------------------------------- reports --

@dataclass
class Tally:
    """What a summary needs of a backtest, counted as it runs (`upsell simulate` on a long
    recording holds no decision), or from a whole result (`of`)."""
    proposed: Counter = field(default_factory=Counter)        # (trigger, kind)
    suppressed: Counter = field(default_factory=Counter)      # (trigger, kind, reason)
    events: int = 0
    late_events: int = 0
    outcomes: Counter = field(default_factory=Counter)
    dead_letters: int = 0
    first_dead: list = field(default_factory=list)            # the first 10, by line
    bad_lines: int = 0
    first_bad: list = field(default_factory=list)
    measure: Measure = field(default_factory=Measure)

    @classmethod
    def of(cls, result: BacktestResult) -> "Tally":
        t = cls(events=result.events, late_events=result.late_events, outcomes=Counter(result.outcomes),
                dead_letters=len(result.dead_letters), first_dead=result.dead_letters[:10],
                bad_lines=len(result.bad_lines), first_bad=result.bad_lines[:10])
        for p in result.proposals:
            t.proposed[(p["trigger"], p["kind"])] += 1
            t.measure.add(PROPOSAL, p)
        for p in result.suppressed:
            t.suppressed[(p["trigger"], p["kind"], p["suppressed"]["reason"])] += 1
            t.measure.add(SUPPRESSED, p)
        for r in result.statuses:
            t.measure.add(STATUS, r)
        return t

    def dead(self, d: DeadLetter) -> None:
        self.dead_letters += 1
        if len(self.first_dead) < 10:
            self.first_dead.append(d)

    def bad(self, b: BadLine) -> None:
        self.bad_lines += 1
        if len(self.first_bad) < 10:
            self.first_bad.append(b)


def summary(result: "BacktestResult | Tally") -> str:
    """What a backtest decided, for a person: counts, a table per trigger and kind (proposed,
    suppressed by reason), outcomes, the first dead letters and unreadable lines."""
    t = result if isinstance(result, Tally) else Tally.of(result)
    rows = defaultdict(lambda: {"proposed": 0, "suppressed": Counter()})
    for (trigger, kind), n in t.proposed.items():
        rows[(trigger, kind)]["proposed"] += n
    for (trigger, kind, reason), n in t.suppressed.items():
        rows[(trigger, kind)]["suppressed"][reason] += n
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name, justify in (("trigger", "left"), ("kind", "left"), ("proposed", "right"),
                          ("suppressed", "right"), ("reasons", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for (trigger, kind), r in sorted(rows.items()):
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["suppressed"].items()))
        table.add_row(trigger, kind, str(r["proposed"]), str(sum(r["suppressed"].values())), reasons)
    kinds: Counter = Counter()
    for (_, kind), n in t.proposed.items():
        kinds[kind] += n
    table.add_section()
    table.add_row("total", "", str(sum(t.proposed.values())), str(sum(t.suppressed.values())),
                  ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    text = StringIO()
    Console(file=text, width=132, color_system=None, force_terminal=False).print(table)
    out = [f"events: {t.events} valid, {t.dead_letters} dead letters, "
           f"{t.bad_lines} unreadable lines, {t.late_events} late",
           "\n".join(line.rstrip() for line in text.getvalue().splitlines())]
    if t.outcomes:
        out += ["", "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(t.outcomes.items()))]
    if t.measure:
        out += ["", measure_table(t.measure)]
    if t.dead_letters:
        out += ["", "dead letters (first 10):"]
        out += [f"  line {d.line} [{d.topic}]: {d.error}" for d in t.first_dead]
    if t.bad_lines:
        out += ["", "unreadable lines (first 10):"]
        out += [f"  line {b.line}: {b.error}" for b in t.first_bad]
    return "\n".join(out)


def compare_table(a: BacktestResult, b: BacktestResult, diff: dict[str, list]) -> str:
    """Before and after per trigger and kind, for a person: proposals and suppressions under each
    rules file, and how many proposals appear, disappear or change (`compare`)."""
    rows: dict = defaultdict(Counter)
    for name, result in (("before", a), ("after", b)):
        tally = Tally.of(result)
        for key, n in tally.proposed.items():
            rows[key][name] += n
        for (trigger, kind, _), n in tally.suppressed.items():
            rows[(trigger, kind)][name + "_suppressed"] += n
    for what in ("appear", "disappear"):
        for p in diff[what]:
            rows[(p["trigger"], p["kind"])][what] += 1
    for _, new in diff["change"]:
        rows[(new["trigger"], new["kind"])]["change"] += 1
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    columns = ("before", "after", "appear", "disappear", "change", "before_suppressed", "after_suppressed")
    for name in ("trigger", "kind", *columns):
        table.add_column(name.replace("_suppressed", " suppr."), justify="left" if name in ("trigger", "kind") else "right")
    total: Counter = Counter()
    for (trigger, kind), r in sorted(rows.items()):
        total.update(r)
        table.add_row(trigger, kind, *(str(r[c]) for c in columns))
    table.add_section()
    table.add_row("total", "", *(str(total[c]) for c in columns))
    text = StringIO()
    Console(file=text, width=132, color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in text.getvalue().splitlines())


def compare(a: BacktestResult, b: BacktestResult) -> dict[str, list]:
    """Proposals that appear, disappear or change when the rules go from a to b."""
    ids_a = {p["proposal_id"]: p for p in a.proposals}
    ids_b = {p["proposal_id"]: p for p in b.proposals}
    changed = [(ids_a[i], ids_b[i]) for i in ids_a.keys() & ids_b.keys() if ids_a[i] != ids_b[i]]
    only_a = [p for i, p in ids_a.items() if i not in ids_b]
    only_b = [p for i, p in ids_b.items() if i not in ids_a]
    # same customer, trigger and moment but another offer: a change, not a pair of add/remove
    slot = lambda p: (p["customer_id"], p["trigger"], p["created_at"])  # noqa: E731
    by_slot = {slot(p): p for p in only_a}
    appear = []
    for p in only_b:
        old = by_slot.pop(slot(p), None)
        if old is None:
            appear.append(p)
        else:
            changed.append((old, p))
    changed.sort(key=lambda ab: _order(ab[1]))
    return {"appear": sorted(appear, key=_order), "disappear": sorted(by_slot.values(), key=_order),
            "change": changed}
