"""`upsell generate`: a realistic, seeded synthetic stream in the recorded format.

A mix of SaaS customers (free and paid plans, B2B with fiscal years, growing,
steady, idle and hot usage, monthly and annual contracts) and shoppers
(B2C and B2B personas whose baskets overlap, orders near the free-shipping
and bulk lines), unhappy customers (low NPS, high-severity tickets, churn
intent), and proposal outcomes. Outcomes answer the proposals the default
rules make on the generated stream so far (an in-loop backtest), so declines,
cool-downs and accepted upgrades are consistent with the data. Same
arguments, same bytes.

The effect of a proposal is known (`Effect`): a proposal sent is accepted with the treated rate
(per experiment variant if given), and a customer whose decision was held out (the rules file's
`[holdout]`) does what would have been offered on their own with the control rate: moves to the
offered plan or term, or orders the offered items. So the uplift `upsell simulate` measures can
be checked against the rates that made the data.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Iterator

import orjson

from rules.config import Rules, load_rules
from rules.engine import PROPOSAL, SUPPRESSED, PartitionEngine
from rules.timeutil import DAY, format_ts, parse_ts
from schemas.validate import validate
from streams.recorded import dump_line

HOUR = 3_600_000
PERSONAS = {
    "office": ["keyboard", "headset", "webcam", "usb-hub", "mouse"],
    "coffee": ["coffee-beans", "mug", "coffee-filter", "grinder"],
    "shoes": ["leather-shoes", "shoe-cream", "waterproof-spray", "mug"],
    "laptop": ["pc-laptop", "mouse", "laptop-bag", "headset", "monitor"],
}
METRICS = ("seats", "storage_gb", "api_calls")


@dataclass
class Saas:
    cid: str
    plan: str
    ratios: dict            # metric -> share of the *original* plan's limit
    growth: dict
    term: str | None = None
    renews_at: int | None = None


@dataclass
class Shopper:
    cid: str
    persona: list
    next_order: int = 0
    orders: int = 0


@dataclass(order=True)
class _Ev:
    ts: int
    seq: int
    topic: str = field(compare=False)
    key: str = field(compare=False)
    value: object = field(compare=False)


@dataclass(frozen=True)
class Effect:
    """The truth behind the outcomes: the chance a proposal sent is accepted (`treated`, or the
    customer's variant's in `by_variant`), and the chance a held-out customer does it anyway."""
    treated: float = 0.2
    control: float = 0.05
    by_variant: dict = field(default_factory=dict)      # variant name -> treated rate

    def rate(self, p: dict) -> float:
        return self.by_variant.get(p.get("variant"), self.treated)


class Generator:
    def __init__(self, customers: int, days: int, seed: int, start: str, rules: Rules,
                 bad_rate: float = 0.001, effect: Effect | None = None):
        self.rng = random.Random(seed)
        self.n, self.days, self.rules = customers, days, rules
        self.start = parse_ts(start if "T" in start else start + "T00:00:00Z")
        self.end = self.start + days * DAY
        self.bad_rate = bad_rate
        self.effect = effect or Effect()
        self.queue: list[_Ev] = []
        self.seq = 0
        self.saas: dict[str, Saas] = {}
        self.shoppers: dict[str, Shopper] = {}
        self.engine = PartitionEngine(rules, 0)
        self.plans = [p.name for p in rules.plans]

    # ------------------------------------------------------------ helpers --
    def at(self, day_ms: int, lo=8, hi=19) -> int:
        return day_ms + self.rng.randrange(lo * HOUR, hi * HOUR, 60_000)

    def emit(self, ts: int, topic: str, key: str, value) -> None:
        if ts >= self.end:
            return
        self.seq += 1
        heapq.heappush(self.queue, _Ev(ts, self.seq, topic, key, value))

    # -------------------------------------------------------------- setup --
    def setup(self) -> None:
        rng = self.rng
        for i in range(self.n):
            cid = f"c-{i:05d}"
            if rng.random() < 0.6:
                self._setup_saas(cid)
            else:
                self._setup_shopper(cid)

    def _setup_saas(self, cid: str) -> None:
        rng = self.rng
        segment = "b2b" if rng.random() < 0.85 else "b2c"
        plan = rng.choices(self.plans, weights=[30, 40, 22, 8][: len(self.plans)])[0]
        new = rng.random() < 0.15
        signup = self.start + (rng.randrange(0, 60) * DAY if new else -rng.randrange(30, 900) * DAY)
        profile = {"customer_id": cid, "segment": segment, "plan": plan, "signup_at": format_ts(signup)}
        if segment == "b2b":
            profile["fiscal_year_end_month"] = rng.choices([3, 12, rng.randrange(1, 13)], weights=[60, 20, 20])[0]
        first = max(signup, self.start)
        self.emit(self.at(first - first % DAY), "customers", cid, profile)
        style = rng.choices(["growing", "steady", "idle", "hot"], weights=[30, 35, 25, 10])[0]
        if new and rng.random() < 0.5:
            style = "hot"
        lo, hi, g = {"growing": (0.45, 0.75, 0.009), "steady": (0.3, 0.65, 0.0),
                     "idle": (0.02, 0.15, 0.0), "hot": (0.75, 0.95, 0.005)}[style]
        c = Saas(cid, plan, {m: rng.uniform(lo, hi) for m in METRICS},
                 {m: g * rng.uniform(0.5, 1.5) + rng.uniform(-0.001, 0.001) for m in METRICS})
        if self.rules.plan_by_name[plan].paid:
            c.term = "annual" if rng.random() < 0.5 else "monthly"
            c.renews_at = first + (rng.randrange(10, 300) if c.term == "annual" else rng.randrange(1, 30)) * DAY
            c.renews_at -= c.renews_at % DAY
            self.emit(self.at(first - first % DAY) + 60_000, "contracts", cid,
                      {"customer_id": cid, "plan": plan, "term": c.term, "renews_at": format_ts(c.renews_at)})
        c.first = first
        self.saas[cid] = c
        self._setup_feedback(cid, first)

    def _setup_shopper(self, cid: str) -> None:
        rng = self.rng
        segment = "b2c" if rng.random() < 0.75 else "b2b"
        persona = PERSONAS["laptop" if segment == "b2b" and rng.random() < 0.6 else
                           rng.choice(["office", "coffee", "shoes"])]
        profile = {"customer_id": cid, "segment": segment,
                   "signup_at": format_ts(self.start - rng.randrange(30, 900) * DAY)}
        if segment == "b2b":
            profile["fiscal_year_end_month"] = 3
        self.emit(self.at(self.start), "customers", cid, profile)
        self.shoppers[cid] = Shopper(cid, persona, self.start + rng.randrange(0, 20) * DAY)
        self._setup_feedback(cid, self.start)

    def _setup_feedback(self, cid: str, first: int) -> None:
        rng = self.rng
        span = max(1, (self.end - first) // DAY)
        if rng.random() < 0.3:
            score = rng.choices(range(11), weights=[1, 1, 1, 2, 2, 3, 4, 8, 12, 12, 10])[0]
            self.emit(self.at(first + rng.randrange(span) * DAY), "feedback", cid,
                      {"customer_id": cid, "type": "nps", "score": score})
        if rng.random() < 0.08:
            opened = self.at(first + rng.randrange(span) * DAY)
            tid = f"t-{cid}-{rng.randrange(10**6)}"
            ticket = {"customer_id": cid, "type": "ticket", "ticket_id": tid, "severity": "high"}
            self.emit(opened, "feedback", cid, {**ticket, "status": "open"})
            self.emit(opened + rng.randrange(3, 15) * DAY, "feedback", cid, {**ticket, "status": "closed"})
        if rng.random() < 0.03:
            self.emit(self.at(first + rng.randrange(span) * DAY), "feedback", cid,
                      {"customer_id": cid, "type": "churn_intent", "comment": "asked how to cancel"})

    # ---------------------------------------------------------------- days --
    def day(self, d: int) -> None:
        rng = self.rng
        day_ms = self.start + d * DAY
        for c in self.saas.values():
            if day_ms < c.first - c.first % DAY:
                continue
            plan = self.rules.plan_by_name[c.plan]
            for m in METRICS:
                if m == "storage_gb" and d % 2:
                    continue
                c.ratios[m] = min(1.15, max(0.0, c.ratios[m] + c.growth[m] + rng.uniform(-0.01, 0.01)))
                value = c.ratios[m] * plan.limits[m]
                value = round(value, 1) if m == "storage_gb" else int(value)
                ev = {"customer_id": c.cid, "metric": m, "value": value}
                if rng.random() < 0.2:
                    ev["limit"] = plan.limits[m]
                self.emit(self.at(day_ms, 6, 22), "usage", c.cid, ev)
            if c.term == "monthly" and c.renews_at is not None and c.renews_at <= day_ms:
                c.renews_at += 30 * DAY
                self.emit(self.at(day_ms), "contracts", c.cid, {"customer_id": c.cid, "plan": c.plan,
                                                                "term": c.term, "renews_at": format_ts(c.renews_at)})
        for s in self.shoppers.values():
            if s.next_order <= day_ms:
                self._order(s, day_ms)
                s.next_order = day_ms + rng.randrange(7, 25) * DAY

    def _order(self, s: Shopper, day_ms: int, skus=None) -> None:
        rng = self.rng
        if skus is None:
            k = rng.choices([1, 2, 3], weights=[5, 3, 2])[0]
            skus = rng.sample(s.persona, min(k, len(s.persona)))
        items = []
        for sku in skus:
            price = self.rules.products[sku]["price"]
            qty = rng.choice([8, 9]) if price < 2000 and rng.random() < 0.15 else 1
            items.append({"sku": sku, "qty": qty, "price": price})
        s.orders += 1
        self.emit(self.at(day_ms), "purchases", s.cid,
                  {"customer_id": s.cid, "order_id": f"o-{s.cid}-{s.orders}", "items": items, "currency": "JPY"})

    def _outcomes(self, decisions: list[tuple[bool, dict]]) -> None:
        rng = self.rng
        for held, p in decisions:
            if held:
                if rng.random() < self.effect.control:
                    when = parse_ts(p["created_at"]) + rng.randrange(1, 6) * DAY + rng.randrange(HOUR)
                    self._on_their_own(p, when)
                continue
            rate = self.effect.rate(p)
            weights = [20, 30, 50] if rate == 0.2 else [rate, (1 - rate) * 0.375, (1 - rate) * 0.625]
            outcome = rng.choices(["accepted", "declined", "ignored"], weights=weights)[0]
            when = parse_ts(p["created_at"]) + rng.randrange(1, 6) * DAY + rng.randrange(HOUR)
            cid = p["customer_id"]
            self.emit(when, "proposal-outcomes", cid, {"customer_id": cid, "proposal_id": p["proposal_id"],
                                                       "trigger": p["trigger"], "offer": p["offer"],
                                                       "outcome": outcome})
            if outcome != "accepted":
                continue
            offer = p["offer"]
            if "plan" in offer and cid in self.saas and offer.get("term") is None:
                self._move_plan(self.saas[cid], offer["plan"], when + HOUR)
            elif "skus" in offer and cid in self.shoppers:
                self._order(self.shoppers[cid], when + 2 * HOUR - (when + 2 * HOUR) % DAY, offer["skus"])

    def _move_plan(self, c: Saas, plan: str, when: int) -> None:
        """The customer moves to `plan` at `when`; usage keeps its level, as a share of the new limits."""
        old, new = self.rules.plan_by_name[c.plan], self.rules.plan_by_name[plan]
        for m in METRICS:
            c.ratios[m] *= old.limits[m] / new.limits[m]
        c.plan = new.name
        self.emit(when, "customers", c.cid, {"customer_id": c.cid, "plan": new.name})

    def _on_their_own(self, p: dict, when: int) -> None:
        """A held-out customer does what its decision would have offered, unasked, at `when`."""
        offer, cid = p["offer"], p["customer_id"]
        c = self.saas.get(cid)
        if "plan" in offer and c is not None:
            if "term" in offer:
                c.term = "annual"
                c.renews_at = (c.renews_at or when) + 365 * DAY
                self.emit(when, "contracts", cid, {"customer_id": cid, "plan": c.plan, "term": "annual",
                                                   "renews_at": format_ts(c.renews_at)})
                return
            self._move_plan(c, offer["plan"], when)
            return
        if "line" in offer:
            line = self.rules.volume_line(offer["line"])
            sku = offer.get("sku") or next(iter(self.rules.products))
            items = ([{"sku": sku, "qty": line.min_qty, "price": self.rules.products[sku]["price"]}]
                     if "sku" in offer else [{"sku": sku, "qty": 1, "price": line.min_total}])
        elif "skus" in offer:
            items = [{"sku": s, "qty": 1, "price": self.rules.products[s]["price"]} for s in offer["skus"]]
        else:
            return
        self.emit(when, "purchases", cid, {"customer_id": cid, "order_id": f"o-{cid}-own-{self.seq}",
                                           "items": items, "currency": "JPY"})

    # ---------------------------------------------------------------- run --
    def run(self) -> Iterator[bytes]:
        self.setup()
        rng = self.rng
        for d in range(self.days):
            self.day(d)
            day_end = self.start + (d + 1) * DAY
            batch = []
            while self.queue and self.queue[0].ts < day_end:
                batch.append(heapq.heappop(self.queue))
            made = []
            for ev in batch:
                clean = validate(ev.topic, ev.value, key=ev.key, plans=self.rules.plan_by_name)
                made.extend(_decisions(self.engine.tick(ev.ts)))
                made.extend(_decisions(self.engine.push(ev.topic, ev.key, ev.ts, clean)))
                value = ev.value
                if rng.random() < self.bad_rate:
                    value = self._corrupt(value)
                yield dump_line(ev.topic, ev.key, format_ts(ev.ts), value)
            self._outcomes(made)

    def _corrupt(self, value: dict):
        """A realistic producer bug: truncated JSON, a wrong type, a missing field, an unknown enum."""
        how = self.rng.randrange(4)
        if how == 0:
            return orjson.dumps(value).decode()[:-7]
        bad = dict(value)
        if how == 1:
            bad["customer_id"] = 42
        elif how == 2:
            bad.pop(next(k for k in bad if k != "customer_id"))
        else:
            bad["type" if "type" in bad else "customer_id"] = "unknown-" + str(self.rng.randrange(9))
        return bad


def _decisions(out: list) -> list[tuple[bool, dict]]:
    """(held out, decision) of the proposals sent and the decisions held out."""
    return [(kind == SUPPRESSED, p) for kind, p in out
            if kind == PROPOSAL or (kind == SUPPRESSED and p["suppressed"]["reason"] == "holdout")]


def generate(customers: int = 1000, days: int = 120, seed: int = 7, start: str = "2025-01-01",
             rules: Rules | None = None, bad_rate: float = 0.001, effect: Effect | None = None) -> Iterator[bytes]:
    return Generator(customers, days, seed, start, rules or load_rules(), bad_rate, effect).run()
