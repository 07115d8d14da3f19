"""Per-customer state: a plain JSON-serialisable dict, updated by input events.

The state holds only what the triggers and guardrails need, pruned to their
windows, so its serialised size stays bounded (see bench/README.md).
"""
from __future__ import annotations

from functools import lru_cache

from .config import Rules
from .timeutil import DAY, month_key, month_start, to_dt


# The customer document's format (docs/guarantees.md lists its keys). A document of an earlier
# version is brought to this one when it is read (`upgrade`), so a worker reads what the
# release before it wrote; a change of format adds a step there and raises the number.
DOCUMENT_VERSION = 2


def new_customer(customer_id: str) -> dict:
    return {
        "v": DOCUMENT_VERSION,
        "id": customer_id,
        "segment": None, "plan": None, "signup_at": None, "fy_month": None,
        "term": None, "renews_at": None,
        "usage": {},          # metric -> {"value", "limit", "samples": [(ms, value, peak_value, peak_ratio)]}
        "low_since": None,    # underuse: since when peak utilisation has stayed below the threshold
        "owned": [],          # every SKU ever bought (sorted)
        "basket": {},         # co-purchase window: sku -> last purchase ms
        "tickets": [],        # open high-severity ticket ids
        "nps_low_at": None, "churn_at": None,
        "sent": [],           # ms of proposals emitted within the frequency-cap window
        "declined": {},       # offer_key -> ms of the decline
        "fired": {},          # once-per-period keys -> ms when the key may be dropped
        "due": None,          # next time-based evaluation (ms), derived
        "off": {},            # input topic -> offset of the last event applied (redelivery guard)
        "track": [],          # decisions whose lifecycle is followed (rules.lifecycle)
    }


def upgrade(c: dict) -> dict:
    """A customer document of an earlier version, in this version's format (in place)."""
    if c.get("v", 0) < 1:       # version 0: no "v"; the oldest had no applied offsets either
        c.setdefault("off", {})
        c["v"] = 1
    if c["v"] < 2:              # version 1: no lifecycle; what it proposed is not followed
        c["track"] = []
        c["v"] = 2
    return c


# ------------------------------------------------------------------ updates --

def apply_customer(c: dict, v: dict, ts: int, rules: Rules) -> None:
    if v.get("plan") is not None and v["plan"] != c["plan"]:
        set_plan(c, v["plan"], ts)
    for src, dst in (("segment", "segment"), ("signup_at", "signup_at"),
                     ("fiscal_year_end_month", "fy_month")):
        if v.get(src) is not None:
            c[dst] = v[src]


def apply_contract(c: dict, v: dict, ts: int, rules: Rules) -> None:
    if v["plan"] != c["plan"]:
        set_plan(c, v["plan"], ts)
    c["term"] = v["term"]
    c["renews_at"] = v["renews_at"]


def set_plan(c: dict, plan: str, ts: int) -> None:
    c["plan"] = plan
    # A new plan means new limits: utilisation restarts from the next sample.
    c["low_since"] = None
    for u in c["usage"].values():
        u["limit"] = None


def apply_usage(c: dict, v: dict, ts: int, rules: Rules) -> tuple[float, float] | None:
    """Record a usage sample; returns (value, limit) or None when no limit is known."""
    metric, value = v["metric"], v["value"]
    limit = v.get("limit")
    if limit is None and c["plan"]:
        plan = rules.plan_by_name.get(c["plan"])
        if plan is not None:
            limit = plan.limits.get(metric)
    usage = c["usage"]
    u = usage.get(metric)
    if u is None:
        u = usage[metric] = {"value": 0, "limit": None, "samples": []}
    u["value"], u["limit"] = value, limit
    if not limit:
        return None
    ratio = value / limit
    # One per day, (last ms, last value, peak value, peak ratio), in time order. Tuples, not
    # lists: a tuple of numbers leaves the cyclic garbage collector's watch, and samples are most
    # of a customer's objects (46 of 55 on a 120-day stream), which every full collection walks.
    samples = u["samples"]
    day = ts - ts % DAY
    if not samples:
        samples.append((ts, value, value, ratio))
    elif (last := samples[-1])[0] < day:                        # the first sample of a later day
        samples.append((ts, value, value, ratio))
    elif last[0] - last[0] % DAY == day:
        samples[-1] = (ts, value, last[2] if last[2] >= value else value,
                       last[3] if last[3] >= ratio else ratio)
    else:                           # a late sample from an earlier day: keep the order
        j = len(samples) - 1
        while j and samples[j - 1][0] >= day:
            j -= 1
        s = samples[j]
        if s[0] - s[0] % DAY == day:
            samples[j] = (max(ts, s[0]), value if ts >= s[0] else s[1], max(s[2], value), max(s[3], ratio))
        else:
            samples.insert(j, (ts, value, value, ratio))
    horizon = ts - rules.keep_usage_ms
    if samples[0][0] <= horizon:
        k = 0
        while k < len(samples) and samples[k][0] <= horizon:
            k += 1
        del samples[:k]
    # underuse: every metric's latest utilisation below the threshold
    threshold = rules.underuse_threshold
    latest = ratio
    if len(usage) > 1:
        for s in usage.values():
            if s["limit"]:
                r = s["value"] / s["limit"]
                if r > latest:
                    latest = r
    if latest >= threshold:
        c["low_since"] = None
    elif c["low_since"] is None:
        c["low_since"] = ts
    return value, limit


def apply_feedback(c: dict, v: dict, ts: int, rules: Rules) -> None:
    kind = v["type"]
    if kind == "nps":
        if v["score"] <= rules.guardrails["unhappy_nps_max"]:
            c["nps_low_at"] = ts
    elif kind == "ticket":
        tid = v["ticket_id"]
        open_high = v["status"] == "open" and v["severity"] == "high"
        if open_high and tid not in c["tickets"]:
            c["tickets"].append(tid)
        elif not open_high and tid in c["tickets"]:
            c["tickets"].remove(tid)
    elif kind == "churn_intent":
        c["churn_at"] = ts


def apply_outcome(c: dict, v: dict, ts: int, rules: Rules) -> None:
    if v["outcome"] == "declined":
        c["declined"][offer_key(v["offer"])] = ts


def add_owned(c: dict, skus) -> None:
    owned = set(c["owned"])
    owned.update(skus)
    c["owned"] = sorted(owned)


def prune(c: dict, now: int, rules: Rules) -> None:
    g = rules.guardrails
    cap = g["cap_window_days"] * DAY
    c["sent"] = [t for t in c["sent"] if t > now - cap]
    cool = g["decline_cooldown_days"] * DAY
    if c["declined"]:
        c["declined"] = {k: t for k, t in c["declined"].items() if t > now - cool}
    if c["fired"]:
        c["fired"] = {k: t for k, t in c["fired"].items() if t > now}


# ------------------------------------------------------------ derivations --

# An offer's part -> the key naming it for people (`with_display_names`): an offer's identity,
# its proposal_id and a decline of it never depend on those keys.
DISPLAY_NAMES = {"plan": "plan_name", "skus": "sku_names", "sku": "sku_name"}
DISPLAY_KEYS = frozenset(DISPLAY_NAMES.values())


def offer_key(offer: dict) -> str:
    """Canonical text of an offer: key order, list order and display names never matter."""
    parts = []
    for k in sorted(offer):
        if k in DISPLAY_KEYS:
            continue
        v = offer[k]
        parts.append(f"{k}={','.join(sorted(map(str, v))) if isinstance(v, list) else v}")
    return ";".join(parts)


def peak_utilisation(c: dict, now: int, window_ms: int) -> tuple[float | None, dict[str, float]]:
    """Peak ratio over all metrics in (now - window, now], and peak value per metric."""
    peak, values = None, {}
    for metric, u in c["usage"].items():
        for ms, _value, peak_value, ratio in u["samples"]:
            if now - window_ms < ms <= now:
                peak = ratio if peak is None else max(peak, ratio)
                values[metric] = max(values.get(metric, 0), peak_value)
    return peak, values


def month_end(ms: int) -> int:
    return _month_end_of_day(ms // DAY)


@lru_cache(maxsize=4096)
def _month_end_of_day(day: int) -> int:
    dt = to_dt(day * DAY)
    return month_start(dt.year, dt.month + 1)


def period_month(ms: int) -> str:
    return month_key(ms)
