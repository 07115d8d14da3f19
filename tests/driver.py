"""A test driver that controls time: plain datetimes in, proposals out."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rules.config import load_rules
from rules.engine import PROPOSAL, SUPPRESSED, PartitionEngine
from rules.timeutil import from_dt
from schemas.validate import validate

UTC = timezone.utc
MS = timedelta(milliseconds=1)


def dt(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


class Driver:
    def __init__(self, rules=None):
        self.rules = rules or load_rules()
        self.engine = PartitionEngine(self.rules)
        self.proposals: list[dict] = []
        self.suppressed: list[dict] = []
        self.statuses: list[dict] = []      # proposal-status records

    def _route(self, out):
        for kind, p in out:
            (self.proposals if kind == PROPOSAL else self.suppressed if kind == SUPPRESSED else self.statuses).append(p)

    def send(self, topic: str, when: datetime, **value) -> "Driver":
        ts = from_dt(when)
        value.setdefault("customer_id", "c-1")
        clean = validate(topic, value, key=value["customer_id"], plans=self.rules.plan_by_name)
        self._route(self.engine.push(topic, value["customer_id"], ts, clean))
        self._route(self.engine.tick(ts + 1))   # stream time moves just past the event
        return self

    def advance(self, when: datetime) -> "Driver":
        """Stream time reaches `when`: every event and timer before it is processed."""
        self._route(self.engine.tick(from_dt(when)))
        return self

    def settle(self, when: datetime) -> "Driver":
        """Stream time reaches `when` inclusive (events and timers at `when` too)."""
        return self.advance(when + MS)

    def triggers(self) -> list[str]:
        return [p["trigger"] for p in self.proposals]

    def reasons(self) -> list[tuple[str, str]]:
        return [(p["trigger"], p["suppressed"]["reason"]) for p in self.suppressed]

    # fixtures of everyday customers
    def saas(self, when: datetime, plan="basic", segment="b2b", signup=None, cid="c-1", **kw) -> "Driver":
        signup = signup or when - timedelta(days=400)
        return self.send("customers", when, customer_id=cid, segment=segment, plan=plan,
                         signup_at=signup.strftime("%Y-%m-%dT%H:%M:%SZ"), **kw)
