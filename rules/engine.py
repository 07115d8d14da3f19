"""The partition engine: event-time ordering, timers and per-customer rules.

One `PartitionEngine` owns the customers of one partition (every input topic
is co-partitioned by customer_id). It is pure: the Faust agents feed it
decoded events (`push`) and persist what it reports dirty; the offline
backtest feeds it a file's events already in (time, topic rank) order
(`apply_sorted`, no reorder buffer). Both get byte-identical proposals because
the order in which events are applied is a function of the events alone:

* Each input topic-partition is applied in its own order (offsets), like Kafka
  Streams' partition groups: every topic has a FIFO of pending events, and the
  next event applied is the head with the lowest (timestamp, topic rank), once
  the partition's watermark has passed it. The watermark is the lowest
  high-water timestamp over all input topics, raised by the wall clock (live)
  and watermark records (end of a replay). So the order is a function of the
  topics' contents alone, whatever the interleaving on the wire.
* Timers (renewal, fiscal year end, underuse, season, co-purchase window)
  fire at their due moment, before any event with the same timestamp, and
  the proposal's created_at is the due moment, never the wall clock.
* An event older than the watermark is late: it is counted (`late_events`) and
  applied as soon as it is the head of its topic.
* Pending events are not state: the worker acknowledges an event to Kafka only
  once it is applied (`take_applied`), so the committed offset never passes a
  pending event, and a restarted engine gets them again from the broker.
* A record far ahead of its topic-partition cannot hold it: an event is dropped as `ahead`
  (`take_rejected`, a dead letter for the caller) once a record read after it on the same
  topic-partition is more than `max_ahead` ms older. Waiting in its FIFO until then, it holds
  its topic back by at most `max_ahead` of event time. The call depends on the topic-partition's
  records alone, so the backtest makes it too (`streams.backtest.far_ahead`).
* Redelivery is harmless. Live, every event carries its offset; a customer
  records the last offset applied per topic (exact, since a topic is applied
  in offset order), so an event delivered again after a crash or a take-over
  (Kafka is at least once) is recognised and dropped (`duplicates`).
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict, deque

import orjson

from . import lifecycle
from . import state as st
from .config import Rules
from .guardrails import arbitrate
from .timeutil import DAY, parse_ts
from .triggers import next_due, purchase_triggers, time_triggers, usage_triggers

INPUT_TOPICS = ("customers", "contracts", "feedback", "proposal-outcomes", "purchases", "usage")
PROPOSAL, SUPPRESSED, STATUS = "proposal", "suppressed", "status"   # what `out` lists carry


def thaw(blob: bytes) -> dict:
    """A customer from its JSON (what `PartitionEngine.freeze` kept), as the engine holds it."""
    return _as_held(orjson.loads(blob))


def _as_held(c: dict) -> dict:
    """A customer parsed from JSON, as the engine holds it (in place)."""
    if c.get("v") != st.DOCUMENT_VERSION:    # written by an earlier release
        st.upgrade(c)
    for u in c["usage"].values():       # JSON has no tuples (see state.apply_usage)
        u["samples"] = list(map(tuple, u["samples"]))
    return c


class CoPurchase:
    """Per-partition counts of customers having SKUs (and pairs) in their 90-day window."""

    def __init__(self):
        self.count: dict[str, int] = defaultdict(int)
        self.pairs: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, basket, sku: str) -> None:
        self.count[sku] += 1
        for other in basket:
            if other != sku:
                self.pairs[sku][other] += 1
                self.pairs[other][sku] += 1

    def remove(self, basket, sku: str) -> None:
        self.count[sku] -= 1
        for other in basket:
            if other != sku:
                self.pairs[sku][other] -= 1
                self.pairs[other][sku] -= 1

    def recommend(self, sku, *, exclude_self, owned, min_support, min_confidence, limit):
        """[(sku_b, support, confidence, n_a)] among *other* customers, best first."""
        n_a = self.count.get(sku, 0) - (1 if sku in exclude_self else 0)
        if n_a <= 0 or sku not in self.pairs:
            return []
        recs = []
        for b, n_ab in self.pairs[sku].items():
            if b in owned or n_ab < min_support:
                continue
            conf = n_ab / n_a
            if conf >= min_confidence:
                recs.append((b, n_ab, conf, n_a))
        recs.sort(key=lambda r: (-r[2], -r[1], r[0]))
        return recs[:limit]


class PartitionEngine:
    def __init__(self, rules: Rules, partition: int = 0, topics=INPUT_TOPICS, max_ahead: int | None = None,
                 forward_sources: int | None = None):
        self.rules = rules
        self.partition = partition
        self.max_ahead = max_ahead      # ms; None: no event is dropped as ahead
        # Records forwarded from the partition they were produced to (`push_forwarded`): a heap
        # by (ts, 2 * topic rank + 1, source partition, source offset, offset, topic, key, value).
        # With `forward_sources` (the partition count), stream time also waits for every other
        # partition's forward marks (`mark_forwarded`); without, for `tick` alone.
        self.fwd: list = []
        self.fwd_marks: dict[int, int] = {}
        self.fwd_hw: int | None = None
        self._fwd_from = (frozenset(range(forward_sources)) - {partition}) if forward_sources else None
        self._rank = {t: r for r, t in enumerate(topics)}
        self.customers: dict[str, dict] = {}
        self.hw: dict[str, int | None] = {t: None for t in topics}
        self.tick_ms: int | None = None
        self.watermark: int | None = None
        self.fifo: dict[str, deque] = {t: deque() for t in topics}   # (ts, key, value, offset)
        self._fifos = list(self.fifo.items())                         # in rank order
        self.pending: set[tuple[str, int]] = set()   # (topic, offset) waiting in a FIFO
        self.applied: list[tuple[str, int]] = []      # (topic, offset) applied since take_applied()
        self.rejected: list[tuple[str, int, int, int]] = []   # (topic, offset, ts, ts of the later record)
        self._fifo_max: dict[str, int] = {}           # topic -> at least the latest ts in its FIFO
        self.timers: list = []
        self.co = CoPurchase()
        self.stats = {"events": defaultdict(int), "late_events": 0,
                      "proposed": defaultdict(int), "suppressed": defaultdict(int),
                      "outcomes": defaultdict(int), "status": Counter(), "duplicates": 0, "ahead": 0}
        self.dirty: set[str] = set()
        self._cooling: dict[str, bytes] = {}   # written at the last batch end: cid -> its JSON
        self._window = rules.t("co_purchase")["window_days"] * DAY

    # ------------------------------------------------------------ inputs --
    def push(self, topic: str, key: str, ts: int, value: dict, offset: int | None = None) -> list:
        """A validated event from an input topic; returns [(PROPOSAL|SUPPRESSED|STATUS, dict)].

        `offset` is the event's offset in its topic-partition (live) or None (tests); with
        it, an event seen before is dropped. (The backtest uses `apply_sorted`.)
        """
        out: list = []
        if offset is not None:
            if (topic, offset) in self.pending:       # its first copy is acknowledged when applied
                self.stats["duplicates"] += 1
                return out
            c = self.customer(key)
            if c is not None and c["off"].get(topic, -1) >= offset:
                self.stats["duplicates"] += 1
                self.applied.append((topic, offset))  # applied before: acknowledged with this batch
                return out
        q = self.fifo[topic]
        if q and self.max_ahead is not None:
            fmax = self._fifo_max[topic]
            if fmax > ts + self.max_ahead:
                self._drop_ahead(topic, q, ts)
            elif ts > fmax:
                self._fifo_max[topic] = ts
        else:
            self._fifo_max[topic] = ts
        self.stats["events"][topic] += 1
        if self.watermark is not None and ts < self.watermark:
            self.stats["late_events"] += 1
        q.append((ts, key, value, offset))
        if offset is not None:
            self.pending.add((topic, offset))
        hw = self.hw[topic]
        if hw is None or ts > hw:
            self.hw[topic] = ts
        w = self.watermark
        # After every call the watermark is at least the lowest high-water mark, and no FIFO
        # head is below it. An event at or above it, on a topic whose high-water mark was
        # above it, moves neither: nothing can be released (the common case on a busy topic).
        if w is None or ts < w or hw is None or hw <= w:
            self._release(out)
        return out

    def apply_sorted(self, topic: str, key: str, ts: int, value: dict) -> list:
        """The backtest's shortcut for `push` + `tick(ts)`: events come in (timestamp, topic
        rank) order, so each is applied at once, after the timers due by its timestamp, in the
        order `_release` would apply them."""
        out: list = []
        self.stats["events"][topic] += 1
        if self.watermark is None or ts > self.watermark:
            self.watermark = ts
        hw = self.hw[topic]
        if hw is None or ts > hw:
            self.hw[topic] = ts
        timers = self.timers
        if timers and timers[0][0] <= ts:     # those before ts, then those at ts: one pass
            self._fire_timers(ts, True, out)
        self._apply(topic, key, ts, value, out, None)
        return out

    def push_forwarded(self, topic: str, key: str, ts: int, value: dict, source: int,
                       source_offset: int | None = None, offset: int | None = None) -> list:
        """A validated event of `topic` produced to partition `source` (at `source_offset`) and
        forwarded here, at `offset` of the repartition topic. Applied in (ts, topic rank) order
        with the others, after a direct event of the same time and topic; one read again (its
        source record forwarded twice, or re-read here) is dropped."""
        out: list = []
        if offset is not None and ("repartition", offset) in self.pending:
            self.stats["duplicates"] += 1
            return out
        if source_offset is not None:
            c = self.customer(key)
            if c is not None and c["off"].get(f"{topic}@{source}", -1) >= source_offset:
                self.stats["duplicates"] += 1
                if offset is not None:
                    self.applied.append(("repartition", offset))
                return out
        self.stats["events"][topic] += 1
        if self.watermark is not None and ts < self.watermark:
            self.stats["late_events"] += 1
        heapq.heappush(self.fwd, (ts, 2 * self._rank[topic] + 1, source, source_offset, offset, topic, key, value))
        if offset is not None:
            self.pending.add(("repartition", offset))
        self._release(out)
        return out

    def mark_forwarded(self, source: int, ts: int) -> list:
        """A forward mark: partition `source` forwards no later record older than ts."""
        if ts > self.fwd_marks.get(source, ts - 1):
            self.fwd_marks[source] = ts
        self._forward_hw()
        out: list = []
        self._release(out)
        return out

    def _forward_hw(self) -> None:
        """The lowest forward mark over the other partitions, once each has sent one."""
        if self._fwd_from and self._fwd_from <= self.fwd_marks.keys():
            self.fwd_hw = min(self.fwd_marks[s] for s in self._fwd_from)

    def _drop_ahead(self, topic: str, q: deque, ts: int) -> None:
        """Drop the events waiting on `topic` that are more than `max_ahead` after `ts`, the
        record read after them; the topic's high-water mark falls back to what remains (an
        event dropped here never happened, as in the backtest)."""
        limit = ts + self.max_ahead
        keep = deque()
        for item in q:
            if item[0] > limit:
                self.rejected.append((topic, item[3], item[0], ts))
                if item[3] is not None:
                    self.pending.discard((topic, item[3]))
                self.stats["events"][topic] -= 1
                self.stats["ahead"] += 1
            else:
                keep.append(item)
        q.clear()
        q.extend(keep)
        rest = max((item[0] for item in q), default=None)
        self._fifo_max[topic] = ts if rest is None or rest < ts else rest
        self.hw[topic] = rest if rest is not None else self.watermark

    def take_rejected(self) -> list[tuple[str, int, int, int]]:
        """(topic, offset, ts, later_ts) of the events dropped as ahead since the last call."""
        done, self.rejected = self.rejected, []
        return done

    def mark(self, topic: str, ts: int) -> list:
        """A watermark record: no later event on this topic-partition is older than ts."""
        hw = self.hw[topic]
        if hw is None or ts > hw:
            self.hw[topic] = ts
        out: list = []
        self._release(out)
        return out

    def tick(self, ts: int) -> list:
        """Stream time reached ts on every input topic (the live clock, end of replay)."""
        if self.tick_ms is None or ts > self.tick_ms:
            self.tick_ms = ts
        out: list = []
        self._release(out)
        return out

    # ---------------------------------------------------------- internals --
    def buffered(self) -> int:
        return sum(len(q) for q in self.fifo.values()) + len(self.fwd)

    def next_due(self) -> int | None:
        """The earliest event time waiting here: a pending event (a FIFO head) or a timer. Stream
        time past it applies or fires it; None when nothing waits. (A superseded timer may still be
        counted: passing it then does nothing.)"""
        due = self.timers[0][0] if self.timers else None
        for _, q in self._fifos:
            if q and (due is None or q[0][0] < due):
                due = q[0][0]
        if self.fwd and (due is None or self.fwd[0][0] < due):
            due = self.fwd[0][0]
        return due

    def _release(self, out: list) -> None:
        hws = self.hw.values()
        w = None if None in hws else min(hws)
        if self._fwd_from and w is not None:
            w = None if self.fwd_hw is None else min(w, self.fwd_hw)
        if self.tick_ms is not None and (w is None or self.tick_ms > w):
            w = self.tick_ms
        if self.watermark is not None and (w is None or w < self.watermark):
            w = self.watermark
        if w is None:
            return
        fifos, timers = self._fifos, self.timers
        while self.fwd:
            # with forwarded records waiting: the lowest (ts, 2 * rank (+ 1 if forwarded)) below w
            best, key_best = None, None
            for r, (_, q) in enumerate(fifos):
                if q and q[0][0] < w and (best is None or (q[0][0], 2 * r) < key_best):
                    best, key_best = r, (q[0][0], 2 * r)
            head = self.fwd[0]
            if head[0] < w and (best is None or (head[0], head[1]) < key_best):
                self._apply_forwarded(heapq.heappop(self.fwd), out)
                continue
            if best is None:
                break
            self._apply_head(*fifos[best], out)
        while True:
            # the lowest (ts, rank) head below w, and the next lowest of the other topics:
            # fifos are in rank order, so a tie keeps the lower rank
            best, bt, st, sr = -1, w, w, 0
            for r, (_, q) in enumerate(fifos):
                if q:
                    t = q[0][0]
                    if t < bt:
                        if best >= 0:
                            st, sr = bt, best
                        best, bt = r, t
                    elif t < st:
                        st, sr = t, r
            if best < 0:
                break
            topic, q = fifos[best]
            # the best topic's events go first while they stay below w and the other heads;
            # applying an event never adds to a FIFO, so the other heads stay as they are
            while q:
                ts = q[0][0]
                if ts >= w or ts > st or (ts == st and best > sr):
                    break
                self._apply_head(topic, q, out)
            if st == w:     # no other head was below w, and this topic's is not now: done
                break
        if self.watermark is None or w > self.watermark:
            if timers and timers[0][0] < w:
                self._fire_timers(w, False, out)
            self.watermark = w

    def _apply_head(self, topic: str, q: deque, out: list) -> None:
        """Apply the event at the head of `topic`'s FIFO, after the timers due by its time."""
        ts, key, value, offset = q.popleft()
        if offset is not None:
            self.pending.discard((topic, offset))
            self.applied.append((topic, offset))
        if self.timers and self.timers[0][0] <= ts:
            self._fire_timers(ts, True, out)
        self._apply(topic, key, ts, value, out, offset)

    def _apply_forwarded(self, item: tuple, out: list) -> None:
        ts, _, source, source_offset, offset, topic, key, value = item
        if offset is not None:
            self.pending.discard(("repartition", offset))
            self.applied.append(("repartition", offset))
        origin = f"{topic}@{source}"
        if source_offset is not None:
            c = self.customer(key)
            if c is not None and c["off"].get(origin, -1) >= source_offset:   # two copies were waiting
                self.stats["duplicates"] += 1
                self.stats["events"][topic] -= 1
                return
        if self.timers and self.timers[0][0] <= ts:
            self._fire_timers(ts, True, out)
        self._apply(topic, key, ts, value, out, None)
        if source_offset is not None:
            self.customers[key]["off"][origin] = source_offset

    def _fire_timers(self, limit: int, inclusive: bool, out: list) -> None:
        timers = self.timers
        while timers and (timers[0][0] <= limit if inclusive else timers[0][0] < limit):
            due, cid = heapq.heappop(timers)
            c = self.customer(cid)
            if c is None:
                continue
            if c["track"] and lifecycle.next_deadline(c) == due:
                self._statuses(lifecycle.deadline(c, due, self.rules), out)
                self._track_timer(c)
                self.dirty.add(cid)
            if c["due"] != due:
                continue      # superseded, or a lifecycle deadline alone
            c["due"] = None
            self._expire_basket(c, due)
            self._decide(c, time_triggers(c, due, self.rules), due, out)
            self._reschedule(c, due)
            self.dirty.add(cid)

    def _apply(self, topic: str, key: str, ts: int, v: dict, out: list, offset: int | None) -> None:
        rules = self.rules
        c = self.customer(key)
        if c is None:
            c = self.customers[key] = st.new_customer(key)
        if offset is not None:
            c["off"][topic] = offset
        if c["basket"]:
            self._expire_basket(c, ts)
        cands: list = []
        before = (c["plan"], c["term"], c["renews_at"]) if c["track"] and topic != "usage" else None
        # Time-based dues can only move on profile, contract, basket or underuse changes;
        # other events leave the customer's timer as it is.
        moved = True
        if topic == "usage":
            low_since = c["low_since"]
            got = st.apply_usage(c, v, ts, rules)
            if got is not None:
                cands = usage_triggers(c, v["metric"], got[0], got[1], ts, rules)
            moved = c["low_since"] != low_since
        elif topic == "purchases":
            owned_before = set(c["owned"])
            cands = purchase_triggers(c, v, ts, rules, owned_before, self.co)
            skus = {it["sku"] for it in v["items"]}
            for sku in sorted(skus):
                if sku not in c["basket"]:
                    self.co.add(c["basket"], sku)
                c["basket"][sku] = ts
            st.add_owned(c, skus)
        elif topic == "customers":
            st.apply_customer(c, v, ts, rules)
            cands = time_triggers(c, ts, rules)
        elif topic == "contracts":
            st.apply_contract(c, v, ts, rules)
            cands = time_triggers(c, ts, rules)
        elif topic == "feedback":
            st.apply_feedback(c, v, ts, rules)
            moved = False
        elif topic == "proposal-outcomes":
            st.apply_outcome(c, v, ts, rules)
            self.stats["outcomes"][f"{v['trigger']}:{v['outcome']}"] += 1
            moved = False
        if before is not None:
            self._statuses(lifecycle.observe(c, topic, v, ts, before, rules), out)
        self._decide(c, cands, ts, out)
        if moved:
            self._reschedule(c, ts)
        self.dirty.add(key)

    def _decide(self, c: dict, cands: list, now: int, out: list) -> None:
        if not cands:
            return
        emitted, suppressed = arbitrate(c, cands, now, self.rules)
        tracked = False
        for p in emitted:
            self.stats["proposed"][p["trigger"]] += 1
            out.append((PROPOSAL, p))
            lifecycle.track(c, p, now, parse_ts(p["valid_until"]), False, self.rules)
            tracked = True
        for p in suppressed:
            reason = p["suppressed"]["reason"]
            self.stats["suppressed"][f"{p['trigger']}:{reason}"] += 1
            out.append((SUPPRESSED, p))
            if reason == "holdout":
                lifecycle.track(c, p, now, parse_ts(p["valid_until"]), True, self.rules)
                tracked = True
        if tracked:
            self._track_timer(c)

    def _statuses(self, records: list[dict], out: list) -> None:
        for r in records:
            self.stats["status"][f"{r['trigger']}:{r['status']}"] += 1
            out.append((STATUS, r))

    def _track_timer(self, c: dict) -> None:
        """A timer at the customer's next lifecycle deadline (the trigger timer is `due`; a
        timer whose moment is neither is skipped when it comes)."""
        at = lifecycle.next_deadline(c)
        if at is not None:
            heapq.heappush(self.timers, (at, c["id"]))

    def _expire_basket(self, c: dict, now: int) -> None:
        basket = c["basket"]
        if not basket:
            return
        old = [s for s, t in basket.items() if t + self._window <= now]
        for sku in sorted(old):
            del basket[sku]
            self.co.remove(basket, sku)

    def _reschedule(self, c: dict, now: int) -> None:
        due = next_due(c, now, self.rules)
        if due != c["due"]:
            c["due"] = due
            if due is not None:
                heapq.heappush(self.timers, (due, c["id"]))

    # -------------------------------------------------------- persistence --
    def customer(self, cid: str) -> dict | None:
        """The customer's state, thawed if it was frozen (`freeze`); None if unknown."""
        c = self.customers.get(cid)
        if c.__class__ is bytes:
            c = self.customers[cid] = thaw(c)
        return c

    def freeze(self, cid: str, blob: bytes) -> None:
        """Keep a persisted customer as `blob`, the JSON last written for it, until an event or
        timer needs it again (`customer` thaws it; `written` decides when). As a dict with its
        lists and tuples a customer takes about 3 kB (measured: 3,036 bytes with one usage
        sample), its JSON 350 bytes to 2 kB, and the table holds these same bytes: a worker keeps
        its hot customers as dicts, the others at the size they are written. Not if it changed
        since (it is dirty again)."""
        if cid not in self.dirty:
            self.customers[cid] = blob

    def written(self, blobs: dict[str, bytes]) -> None:
        """A batch end persisted these customers (cid -> the JSON written). The customers written
        at the batch end before, and not since, went a whole batch untouched: they are frozen now
        with the JSON they were written with. The others stay thawed for now, so a customer that
        is busy is not thawed again at every event after a batch end (live, a batch is a second)."""
        for cid, blob in self._cooling.items():
            if cid not in blobs:
                self.freeze(cid, blob)
        self._cooling = blobs

    def take_dirty(self) -> list[tuple[str, dict]]:
        """Customers changed since the last call, for the caller to persist."""
        items = [(cid, self.customers[cid]) for cid in sorted(self.dirty)]
        self.dirty.clear()
        return items

    def applied_offset(self, cid: str, topic: str) -> int:
        """The offset of the last event of `topic` applied to the customer (-1: none)."""
        c = self.customer(cid)
        return -1 if c is None else c["off"].get(topic, -1)

    def forget_offsets(self, topic: str) -> int:
        """Forget every customer's applied offset of `topic`, so that its records are applied
        again (its log was re-created or truncated: the offsets kept name other records).
        Returns how many customers had one."""
        n = 0
        for cid in list(self.customers):
            c = self.customer(cid)
            if c["off"].pop(topic, None) is not None:
                n += 1
                self.dirty.add(cid)
        return n

    def take_applied(self) -> list[tuple[str, int]]:
        """(topic, offset) of the events applied (or dropped as duplicates) since the last call:
        their effects are in the customers, so they may be acknowledged once those are persisted."""
        done, self.applied = self.applied, []
        return done

    def meta(self) -> dict:
        """Partition-level state that cannot be derived from the customers. Pending events are
        not in it: they come again from the broker, so each topic's high-water mark is stored as
        it was before its first pending event. Stored as is, a restored engine would believe
        those events were read and could apply a re-read event before a pending event of another
        topic that is older but not yet re-read. The document must be written with the customers
        before the watermark records that raised its high-water marks are acknowledged: restored
        stale, a topic with no later record would hold the partition's stream time back for good."""
        hw = dict(self.hw)
        for topic, q in self._fifos:
            if q:
                first = min(item[0] for item in q)
                if hw[topic] is None or first < hw[topic]:
                    hw[topic] = first
        fwd = dict(self.fwd_marks)
        if self.fwd:        # forwarded records waiting come again too: marks from before them
            first = min(item[0] for item in self.fwd)
            fwd = {s: min(t, first) for s, t in fwd.items()}
        return {"hw": hw, "tick": self.tick_ms, "watermark": self.watermark, "stats": self.stats,
                "fwd": {str(s): t for s, t in fwd.items()}}

    @classmethod
    def restore(cls, rules: Rules, partition: int, meta: dict | None, customers, topics=INPUT_TOPICS,
                max_ahead: int | None = None, forward_sources: int | None = None):
        """Rebuild from persisted state; timers and co-purchase counts are derived. A customer
        given as its JSON bytes (a table value) is kept frozen (see `freeze`): its dict only
        lives while its timer and basket are read."""
        eng = cls(rules, partition, topics, max_ahead, forward_sources)
        if meta:
            eng.hw.update(meta["hw"])
            eng.fwd_marks = {int(source): ts for source, ts in meta.get("fwd", {}).items()}
            eng._forward_hw()
            eng.tick_ms, eng.watermark = meta["tick"], meta["watermark"]
            for k, v in meta["stats"].items():
                if isinstance(v, dict):
                    eng.stats[k].update(v)
                else:
                    eng.stats[k] = v
        for c in customers:
            if c.__class__ is bytes:
                blob, c = c, orjson.loads(c)
                eng.customers[c["id"]] = blob
            else:
                eng.customers[c["id"]] = _as_held(c)
            if c["due"] is not None:
                eng.timers.append((c["due"], c["id"]))
            if c.get("track"):
                eng.timers.append((lifecycle.next_deadline(c), c["id"]))
            basket = []
            for sku in sorted(c["basket"]):
                eng.co.add(basket, sku)
                basket.append(sku)
        heapq.heapify(eng.timers)
        return eng
