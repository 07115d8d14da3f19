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
  high-water timestamp over all input topics, raised by ticks (wall clock, live)
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
* Redelivery is harmless. Live, every event carries its offset; a customer
  records the last offset applied per topic (exact, since a topic is applied
  in offset order), so an event delivered again after a crash or a take-over
  (Kafka is at least once) is recognised and dropped (`duplicates`).
"""
from __future__ import annotations

import heapq
from collections import defaultdict, deque

import orjson

from . import state as st
from .config import Rules
from .guardrails import arbitrate
from .timeutil import DAY
from .triggers import next_due, purchase_triggers, time_triggers, usage_triggers

INPUT_TOPICS = ("customers", "contracts", "feedback", "proposal-outcomes", "purchases", "usage")
PROPOSAL, SUPPRESSED = "proposal", "suppressed"


def thaw(blob: bytes) -> dict:
    """A customer from its JSON (what `PartitionEngine.freeze` kept), as the engine holds it."""
    return _as_held(orjson.loads(blob))


def _as_held(c: dict) -> dict:
    """A customer parsed from JSON, as the engine holds it (in place)."""
    c.setdefault("off", {})             # written before offsets were kept
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
    def __init__(self, rules: Rules, partition: int = 0, topics=INPUT_TOPICS):
        self.rules = rules
        self.partition = partition
        self.customers: dict[str, dict] = {}
        self.hw: dict[str, int | None] = {t: None for t in topics}
        self.tick_ms: int | None = None
        self.watermark: int | None = None
        self.fifo: dict[str, deque] = {t: deque() for t in topics}   # (ts, key, value, offset)
        self._fifos = list(self.fifo.items())                         # in rank order
        self.pending: set[tuple[str, int]] = set()   # (topic, offset) waiting in a FIFO
        self.applied: list[tuple[str, int]] = []      # (topic, offset) applied since take_applied()
        self.timers: list = []
        self.co = CoPurchase()
        self.stats = {"events": defaultdict(int), "late_events": 0,
                      "proposed": defaultdict(int), "suppressed": defaultdict(int),
                      "outcomes": defaultdict(int), "duplicates": 0}
        self.dirty: set[str] = set()
        self._cooling: dict[str, bytes] = {}   # written at the last batch end: cid -> its JSON
        self._window = rules.t("co_purchase")["window_days"] * DAY

    # ------------------------------------------------------------ inputs --
    def push(self, topic: str, key: str, ts: int, value: dict, offset: int | None = None) -> list:
        """A validated event from an input topic; returns [(PROPOSAL|SUPPRESSED, dict)].

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
        self.stats["events"][topic] += 1
        if self.watermark is not None and ts < self.watermark:
            self.stats["late_events"] += 1
        self.fifo[topic].append((ts, key, value, offset))
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

    def mark(self, topic: str, ts: int) -> list:
        """A watermark record: no later event on this topic-partition is older than ts."""
        hw = self.hw[topic]
        if hw is None or ts > hw:
            self.hw[topic] = ts
        out: list = []
        self._release(out)
        return out

    def tick(self, ts: int) -> list:
        """Stream time reached ts on every input topic (wall-clock ticker, end of replay)."""
        if self.tick_ms is None or ts > self.tick_ms:
            self.tick_ms = ts
        out: list = []
        self._release(out)
        return out

    # ---------------------------------------------------------- internals --
    def buffered(self) -> int:
        return sum(len(q) for q in self.fifo.values())

    def next_due(self) -> int | None:
        """The earliest event time waiting here: a pending event (a FIFO head) or a timer. Stream
        time past it applies or fires it; None when nothing waits. (A superseded timer may still be
        counted: passing it then does nothing.)"""
        due = self.timers[0][0] if self.timers else None
        for _, q in self._fifos:
            if q and (due is None or q[0][0] < due):
                due = q[0][0]
        return due

    def _release(self, out: list) -> None:
        hws = self.hw.values()
        w = None if None in hws else min(hws)
        if self.tick_ms is not None and (w is None or self.tick_ms > w):
            w = self.tick_ms
        if self.watermark is not None and (w is None or w < self.watermark):
            w = self.watermark
        if w is None:
            return
        fifos, timers = self._fifos, self.timers
        pending, applied = self.pending, self.applied
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
                ts, key, value, offset = q.popleft()
                if offset is not None:
                    pending.discard((topic, offset))
                    applied.append((topic, offset))
                if timers and timers[0][0] <= ts:
                    self._fire_timers(ts, True, out)
                self._apply(topic, key, ts, value, out, offset)
            if st == w:     # no other head was below w, and this topic's is not now: done
                break
        if self.watermark is None or w > self.watermark:
            if timers and timers[0][0] < w:
                self._fire_timers(w, False, out)
            self.watermark = w

    def _fire_timers(self, limit: int, inclusive: bool, out: list) -> None:
        timers = self.timers
        while timers and (timers[0][0] <= limit if inclusive else timers[0][0] < limit):
            due, cid = heapq.heappop(timers)
            c = self.customer(cid)
            if c is None or c["due"] != due:
                continue      # superseded
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
        self._decide(c, cands, ts, out)
        if moved:
            self._reschedule(c, ts)
        self.dirty.add(key)

    def _decide(self, c: dict, cands: list, now: int, out: list) -> None:
        if not cands:
            return
        emitted, suppressed = arbitrate(c, cands, now, self.rules)
        for p in emitted:
            self.stats["proposed"][p["trigger"]] += 1
            out.append((PROPOSAL, p))
        for p in suppressed:
            self.stats["suppressed"][f"{p['trigger']}:{p['suppressed']['reason']}"] += 1
            out.append((SUPPRESSED, p))

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
        return {"hw": hw, "tick": self.tick_ms, "watermark": self.watermark, "stats": self.stats}

    @classmethod
    def restore(cls, rules: Rules, partition: int, meta: dict | None, customers, topics=INPUT_TOPICS):
        """Rebuild from persisted state; timers and co-purchase counts are derived. A customer
        given as its JSON bytes (a table value) is kept frozen (see `freeze`): its dict only
        lives while its timer and basket are read."""
        eng = cls(rules, partition, topics)
        if meta:
            eng.hw.update(meta["hw"])
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
            basket = []
            for sku in sorted(c["basket"]):
                eng.co.add(basket, sku)
                basket.append(sku)
        heapq.heapify(eng.timers)
        return eng
