"""What the proposals earned: conversions, revenue, uplift over the holdout group, variants
against each other (`upsell simulate`'s second table; docs/lifecycle.md).

Counted from the decisions and their `proposal-status` records as a backtest makes them
(`Measure.add`). A decision counts as converted once it has a `converted` record; its revenue
is that record's. The treated group is the proposals sent, the control group the decisions
held out (reason `holdout`).

The statistics are the textbook ones, written out (a few lines each; no library needed):
* a proportion's 95% interval: Wilson's score interval;
* the uplift (treated rate - held-out rate) and its 95% interval: Newcombe's hybrid score
  interval for a difference of independent proportions (Newcombe 1998, method 10), which stays
  inside [-1, 1] and behaves with small counts;
* a variant against the experiment's first variant: the two-proportion z-test (pooled), two
  sided; significant when p < 0.05.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from io import StringIO

from rich import box
from rich.console import Console
from rich.table import Table

from rules.engine import PROPOSAL, STATUS, SUPPRESSED

Z95 = 1.959963984540054     # the standard normal's 97.5th percentile
ALPHA = 0.05


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for k successes out of n (n > 0)."""
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return (centre - spread) / denom, (centre + spread) / denom


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """p1 - p2 and its interval by Newcombe's hybrid score method (both n > 0)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """The two-sided p-value of the pooled two-proportion z-test (1.0 when it is undefined)."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    return math.erfc(abs(k1 / n1 - k2 / n2) / se / math.sqrt(2))


@dataclass
class Group:
    decisions: int = 0
    converted: int = 0
    ends: Counter = field(default_factory=Counter)        # declined, withdrawn, expired (records)
    expired_then_converted: int = 0
    expansion_mrr: float = 0.0
    order_value: float = 0.0

    def absorb(self, other: "Group") -> None:
        """Add another group's counts to this one (pooling)."""
        self.decisions += other.decisions
        self.converted += other.converted
        self.ends.update(other.ends)
        self.expired_then_converted += other.expired_then_converted
        self.expansion_mrr += other.expansion_mrr
        self.order_value += other.order_value

    def funnel(self) -> dict[str, int]:
        """How each decision ended: converted, declined, withdrawn, expired (and not converted
        after), or still open when the recording ended."""
        expired = self.ends["expired"] - self.expired_then_converted
        ended = self.converted + self.ends["declined"] + self.ends["withdrawn"] + expired
        return {"converted": self.converted, "declined": self.ends["declined"],
                "withdrawn": self.ends["withdrawn"], "expired": expired, "open": self.decisions - ended}


class Measure:
    """Counts per (trigger, kind), treated and held out, and per (experiment, variant)."""

    def __init__(self):
        self.treated: dict = defaultdict(Group)      # (trigger, kind) -> Group
        self.held: dict = defaultdict(Group)
        self.variants: dict = defaultdict(Group)     # (experiment, variant) -> Group (treated)
        self._converted: set[str] = set()            # proposal ids (a converted record may repeat on the wire)
        self._expired: set[str] = set()              # proposal ids expired and not converted (yet)
        self.weekly: Counter = Counter()             # (Monday of the week, trigger) -> proposals sent

    def add(self, kind: str, p: dict) -> None:
        """A backtest's output: kind PROPOSAL, SUPPRESSED or STATUS (rules.engine)."""
        if kind == STATUS:
            self._status(p)
            return
        if kind == SUPPRESSED and p["suppressed"]["reason"] != "holdout":
            return
        group = (self.treated if kind == PROPOSAL else self.held)[(p["trigger"], p["kind"])]
        group.decisions += 1
        if kind == PROPOSAL:
            self.weekly[(week_of(p["created_at"]), p["trigger"])] += 1
            if "experiment" in p:
                self.variants[(p["experiment"], p["variant"])].decisions += 1

    def _status(self, r: dict) -> None:
        groups = [(self.held if r["holdout"] else self.treated)[(r["trigger"], r["kind"])]]
        if "experiment" in r and not r["holdout"]:
            groups.append(self.variants[(r["experiment"], r["variant"])])
        if r["status"] == "converted":
            if r["proposal_id"] in self._converted:
                return
            self._converted.add(r["proposal_id"])
            after_expiry = r["proposal_id"] in self._expired
            self._expired.discard(r["proposal_id"])
            revenue = r.get("revenue", {})
            for g in groups:
                g.converted += 1
                g.expired_then_converted += after_expiry
                g.expansion_mrr += revenue.get("expansion_mrr", 0.0)
                g.order_value += revenue.get("order_value", 0.0)
        else:
            if r["status"] == "expired":
                if r["proposal_id"] in self._expired:
                    return                          # again on the wire
                self._expired.add(r["proposal_id"])
            for g in groups:
                g.ends[r["status"]] += 1

    def __bool__(self) -> bool:
        return bool(self.treated or self.held)

    def rows(self) -> list[dict]:
        """Per (trigger, kind), then all of them pooled ("total"): the figures of the table."""
        keys = sorted(set(self.treated) | set(self.held))
        out = [self._row(key, self.treated.get(key, Group()), self.held.get(key, Group())) for key in keys]
        pooled_t, pooled_h = Group(), Group()
        for groups, pooled in ((self.treated, pooled_t), (self.held, pooled_h)):
            for g in groups.values():
                pooled.absorb(g)
        return out + [self._row(("total", ""), pooled_t, pooled_h)]

    @staticmethod
    def _row(key: tuple, t: Group, h: Group) -> dict:
        row = {"trigger": key[0], "kind": key[1], "proposals": t.decisions, "converted": t.converted,
               "rate": t.converted / t.decisions if t.decisions else None,
               "expansion_mrr": round(t.expansion_mrr, 2), "order_value": round(t.order_value, 2),
               "declined": t.ends["declined"], "withdrawn": t.ends["withdrawn"],
               "held_out": h.decisions, "held_converted": h.converted,
               "held_rate": h.converted / h.decisions if h.decisions else None, "uplift": None}
        if t.decisions and h.decisions:
            row["uplift"] = newcombe(t.converted, t.decisions, h.converted, h.decisions)
        return row

    def variant_rows(self) -> list[dict]:
        """Per experiment and variant: rate, Wilson interval, and the p-value against the first
        variant (by name) of its experiment."""
        out, first = [], {}
        for (exp, var) in sorted(self.variants):
            g = self.variants[(exp, var)]
            row = {"experiment": exp, "variant": var, "proposals": g.decisions, "converted": g.converted,
                   "rate": g.converted / g.decisions if g.decisions else None,
                   "interval": wilson(g.converted, g.decisions) if g.decisions else None,
                   "p_value": None, "significant": None}
            base = first.setdefault(exp, g)
            if base is not g and base.decisions and g.decisions:
                row["p_value"] = two_proportion_p(g.converted, g.decisions, base.converted, base.decisions)
                row["significant"] = row["p_value"] < ALPHA
            out.append(row)
        return out


def week_of(created_at: str) -> str:
    """The Monday (a day, YYYY-MM-DD) of the week of an RFC 3339 UTC time."""
    day = date.fromisoformat(created_at[:10])
    return (day - timedelta(days=day.weekday())).isoformat()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _money(x: float) -> str:
    return f"{x:,.0f}"


def table(m: Measure) -> str:
    """The measurement as text for a person (empty when nothing was decided)."""
    if not m:
        return ""
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in ("trigger", "kind", "proposals", "converted", "rate", "exp. MRR", "order value",
                 "held out", "held rate", "uplift [95% CI]"):
        t.add_column(name, justify="left" if name in ("trigger", "kind") else "right")
    for r in m.rows():
        if r["trigger"] == "total":
            t.add_section()
        u = r["uplift"]
        uplift = "-" if u is None else f"{u[0]:+.1%} [{u[1]:+.1%}, {u[2]:+.1%}]"
        t.add_row(r["trigger"], r["kind"], str(r["proposals"]), str(r["converted"]), _pct(r["rate"]),
                  _money(r["expansion_mrr"]), _money(r["order_value"]), str(r["held_out"]),
                  _pct(r["held_rate"]), uplift)
    parts = [_render(t)]
    variants = m.variant_rows()
    if variants:
        v = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for name in ("experiment", "variant", "proposals", "converted", "rate [95% CI]", "p vs first", "significant"):
            v.add_column(name, justify="left" if name in ("experiment", "variant") else "right")
        for r in variants:
            ci = r["interval"]
            v.add_row(r["experiment"], r["variant"], str(r["proposals"]), str(r["converted"]),
                      "-" if ci is None else f"{r['rate']:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]",
                      "-" if r["p_value"] is None else f"{r['p_value']:.3f}",
                      "-" if r["significant"] is None else ("yes" if r["significant"] else "no"))
        parts.append(_render(v))
    return ("conversions (within the attribution window; uplift: treated rate - held-out rate, "
            "Newcombe's interval):\n" + "\n\n".join(parts))


def _render(table_: Table) -> str:
    text = StringIO()
    Console(file=text, width=160, color_system=None, force_terminal=False).print(table_)
    return "\n".join(line.rstrip() for line in text.getvalue().splitlines())
