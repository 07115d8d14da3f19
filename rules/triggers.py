"""The nine triggers as pure functions (docs/rules.md).

Each returns candidate proposals (dicts); the guardrails decide which are
emitted. A candidate carries `fire_key` (once per customer, trigger level and
period) and `fire_until` (when that period ends and the level re-arms).
"""
from __future__ import annotations

import hashlib
from bisect import bisect_right
from datetime import datetime, timezone
from functools import lru_cache
from operator import itemgetter

from .config import Plan, Rules
from .state import month_end, offer_key, peak_utilisation, period_month
from .timeutil import DAY, format_ts, from_dt, month_start, to_dt

UPSELL, CROSS_SELL, DOWNSELL = "upsell", "cross_sell", "downsell"
SCHEMA_VERSION = 1


def proposal_id(customer_id: str, trigger: str, offer: dict, period: str) -> str:
    text = f"{customer_id}\x1f{trigger}\x1f{offer_key(offer)}\x1f{period}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def propose(c: dict, trigger: str, kind: str, offer: dict, period: str, now: int, *,
            priority: int, audience: str, reason: str, evidence: dict, valid_until: int,
            fire_until: int, quiet_exempt: bool = False) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "proposal_id": proposal_id(c["id"], trigger, offer, period),
        "customer_id": c["id"], "kind": kind, "trigger": trigger, "offer": offer,
        "audience": audience, "reason": reason, "evidence": evidence, "priority": priority,
        "created_at": format_ts(now), "valid_until": format_ts(valid_until),
        # internal, stripped before emission:
        "_now": now, "_fire_key": f"{trigger}|{period}", "_fire_until": fire_until,
        "_quiet_exempt": quiet_exempt,
    }


def seq_sum(values: list) -> float:
    """Left-to-right addition. Python 3.12's sum() compensates float rounding (Neumaier), so it
    gives other floats than 3.11's: a decision must not depend on the interpreter's version."""
    total = 0
    for v in values:
        total += v
    return total


# ------------------------------------------------------------ plan helpers --

def plan_of(c: dict, rules: Rules) -> Plan | None:
    return rules.plan_by_name.get(c["plan"]) if c["plan"] else None


def tier_lifting(rules: Rules, plan: Plan, metric: str, need: float) -> Plan | None:
    """The lowest tier above `plan` whose limit for `metric` exceeds `need` (no limit = unlimited)."""
    for limit, p in rules.tiers_above(plan, metric):
        if limit > need:
            return p
    return None


def next_tier(rules: Rules, plan: Plan) -> Plan | None:
    return next((p for p in rules.plans if p.tier > plan.tier), None)


def downsell_tier(rules: Rules, plan: Plan, peaks: dict[str, float], fit: float) -> Plan | None:
    """The closest lower paid tier that still holds every peak at <= fit of its limit."""
    best = None
    for p in rules.plans:
        if p.tier < plan.tier and p.paid and all(
                v <= fit * p.limits.get(m, float("inf")) for m, v in peaks.items()):
            best = p
    return best


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


# ------------------------------------------------------------- event-driven --

def usage_triggers(c: dict, metric: str, value: float, limit: float, now: int, rules: Rules) -> list[dict]:
    """`usage_limit` and `usage_forecast` for one sample (the hot path: most events are usage)."""
    plan = plan_of(c, rules)
    if plan is None:
        return []
    target = tier_lifting(rules, plan, metric, value if value > limit else limit)
    if target is None:              # both triggers offer the tier that lifts the limit
        return []
    out = []
    ratio = value / limit
    month = period_month(now)
    fired = c["fired"]
    cfg = rules.triggers["usage_limit"]
    levels = cfg["levels"]          # ascending (checked when the rules are loaded)
    if ratio >= levels[0]:
        reached = [(lv, pr) for lv, pr in zip(levels, cfg["priorities"]) if ratio >= lv]
        level, priority = reached[-1]
        if f"usage_limit|{metric}|{level}|{plan.name}|{month}" not in fired:
            offer = {"plan": target.name}
            evidence = {"metric": metric, "value": value, "limit": limit, "level": level}
            target_limit = target.limits.get(metric)
            allows = f"{target.name} allows {_num(target_limit)}" if target_limit else f"{target.name} has no limit"
            cand = propose(
                c, "usage_limit", UPSELL, offer, f"{metric}|{level}|{plan.name}|{month}", now,
                priority=priority, audience="admin",
                reason=f"{metric} {_num(value)}/{_num(limit)} ({ratio:.0%}) on {plan.name}; {allows}",
                evidence=evidence, valid_until=now + cfg["valid_days"] * DAY, fire_until=month_end(now),
                quiet_exempt=(level >= 1.0 and not plan.paid))
            # the lower levels of this period are covered by the higher one
            cand["_also_fire"] = [f"usage_limit|{metric}|{lv}|{plan.name}|{month}" for lv, _ in reached[:-1]]
            out.append(cand)
    if ratio < 1.0 and f"usage_forecast|{metric}|{plan.name}|{month}" not in fired:
        fc = rules.triggers["usage_forecast"]
        days = forecast_days_to_limit(c["usage"][metric]["samples"], value, limit, now,
                                      fc["window_days"] * DAY, fc["min_points"])
        if days is not None and days <= fc["horizon_days"]:
            out.append(propose(
                c, "usage_forecast", UPSELL, {"plan": target.name}, f"{metric}|{plan.name}|{month}", now,
                priority=fc["priority"], audience="admin",
                reason=(f"{metric} at {_num(value)}/{_num(limit)} ({ratio:.0%}) on {plan.name} is "
                        f"projected to reach the limit in {days:.1f} days; {target.name} lifts it"),
                evidence={"metric": metric, "value": value, "limit": limit,
                          "days_to_limit": round(days, 2)},
                valid_until=now + fc["valid_days"] * DAY, fire_until=month_end(now)))
    return out


_SAMPLE_MS = itemgetter(0)


def forecast_days_to_limit(samples: list, value: float, limit: float, now: int,
                           window_ms: int, min_points: int) -> float | None:
    """Least-squares trend of the daily samples in the window; days until `limit`.
    `samples` are in time order (see `state.apply_usage`), so the window is a suffix.
    Sums add left to right, as `seq_sum` (one pass for both means, one for the moments).
    A square is a product, which IEEE 754 rounds the same on every platform; `dx ** 2` went
    through the C library's pow(), and glibc's differs from dx * dx for about 1 float in 1,200."""
    i = bisect_right(samples, now - window_ms, key=_SAMPLE_MS)
    n = len(samples) - i
    if n < min_points or n < 2:
        return None
    pts = samples[i:] if i else samples
    sx = sy = 0
    for x, y, _, _ in pts:
        sx += x
        sy += y
    mx = sx / n
    my = sy / n
    sxx = sxy = 0
    for x, y, _, _ in pts:
        dx = x - mx
        sxx += dx * dx
        sxy += dx * (y - my)
    if sxx == 0:
        return None
    slope_per_day = sxy / sxx * DAY
    if slope_per_day <= 0:
        return None
    return (limit - value) / slope_per_day


def purchase_triggers(c: dict, order: dict, now: int, rules: Rules, owned_before: set[str],
                      co_stats=None) -> list[dict]:
    """`purchase` (catalog relations, bundles), `co_purchase` and `volume` for one order."""
    out = []
    month = period_month(now)
    skus = [it["sku"] for it in order["items"]]
    owned = owned_before | set(skus)
    pc = rules.t("purchase")
    related_seen: set[str] = set()
    for sku in dict.fromkeys(skus):
        related = [(r, kind) for r, kind in rules.relations.get(sku, ()) if r not in owned]
        related_seen.update(r for r, _ in rules.relations.get(sku, ()))
        if related:
            picks = [r for r, _ in related[: pc["max_items"]]]
            out.append(propose(
                c, "purchase", CROSS_SELL, {"skus": picks}, f"{sku}|{month}", now,
                priority=pc["priority"], audience="user",
                reason=f"bought {_name(rules, sku)}; goes well with {', '.join(_name(rules, r) for r in picks)}",
                evidence={"sku": sku, "relation": related[0][1], "related": picks},
                valid_until=now + pc["valid_days"] * DAY, fire_until=month_end(now)))
        for b in rules.bundles:
            if sku in b["skus"]:
                missing = [s for s in b["skus"] if s not in owned]
                if missing:
                    out.append(propose(
                        c, "purchase", CROSS_SELL, {"bundle": b["name"], "skus": missing},
                        f"{sku}|{b['name']}|{month}", now, priority=pc["priority"], audience="user",
                        reason=(f"bought {_name(rules, sku)}; complete the {b['name']} bundle "
                                f"({b['discount_pct']:g}% off)"),
                        evidence={"sku": sku, "relation": "bundle", "related": missing},
                        valid_until=now + pc["valid_days"] * DAY, fire_until=month_end(now)))
    if co_stats is not None:
        cc = rules.t("co_purchase")
        mine = set(c["basket"])
        for sku in dict.fromkeys(skus):
            recs = co_stats.recommend(sku, exclude_self=mine, owned=owned | related_seen,
                                      min_support=cc["min_support"],
                                      min_confidence=cc["min_confidence"], limit=cc["max_items"])
            if recs:
                picks = [r[0] for r in recs]
                out.append(propose(
                    c, "co_purchase", CROSS_SELL, {"skus": picks}, f"{sku}|{month}", now,
                    priority=cc["priority"], audience="user",
                    reason=(f"customers who bought {_name(rules, sku)} also bought "
                            f"{_name(rules, picks[0])} ({recs[0][2]:.0%} of {recs[0][3]})"),
                    evidence={"sku": sku, "related": picks,
                              "support": [r[1] for r in recs],
                              "confidence": [round(r[2], 4) for r in recs]},
                    valid_until=now + cc["valid_days"] * DAY, fire_until=month_end(now)))
    vc = rules.t("volume")
    total = order.get("total")
    if total is None:
        total = seq_sum([it["qty"] * it.get("price", 0) for it in order["items"]])
    for line in rules.volume_lines:
        if line.min_total is not None and line.min_total * line.near_ratio <= total < line.min_total:
            gap = line.min_total - total
            out.append(propose(
                c, "volume", UPSELL, {"line": line.name, "add_amount": gap}, f"{line.name}|{month}", now,
                priority=vc["priority"], audience="user",
                reason=f"order total {_num(total)} is {_num(gap)} short of {line.benefit} at {_num(line.min_total)}",
                evidence={"line": line.name, "total": total, "threshold": line.min_total},
                valid_until=now + vc["valid_days"] * DAY, fire_until=month_end(now)))
        if line.min_qty is not None:
            for it in order["items"]:
                if line.near_qty <= it["qty"] < line.min_qty:
                    gap = line.min_qty - it["qty"]
                    out.append(propose(
                        c, "volume", UPSELL, {"line": line.name, "sku": it["sku"], "add_qty": gap},
                        f"{line.name}|{it['sku']}|{month}", now, priority=vc["priority"], audience="user",
                        reason=(f"{it['qty']} x {_name(rules, it['sku'])}: {gap} more for "
                                f"{line.benefit} at {line.min_qty}"),
                        evidence={"line": line.name, "sku": it["sku"], "qty": it["qty"],
                                  "threshold": line.min_qty},
                        valid_until=now + vc["valid_days"] * DAY, fire_until=month_end(now)))
                    break
    return out


def _name(rules: Rules, sku: str) -> str:
    return rules.products.get(sku, {}).get("name", sku)


# --------------------------------------------------------------- time-driven --

def fiscal_year_end(fy_month: int, now: int) -> int:
    """Exclusive end (00:00 UTC on the 1st of the next month) of the first fiscal year ending after now."""
    dt = to_dt(now)
    end = month_start(dt.year, fy_month + 1)
    return end if end > now else month_start(dt.year + 1, fy_month + 1)


@lru_cache(maxsize=1024)
def campaign_window(camp, year: int) -> tuple[int, int]:
    start = from_dt(datetime(year, *camp.start, tzinfo=timezone.utc))
    end = from_dt(datetime(year, *camp.end, tzinfo=timezone.utc)) + DAY
    return start, end


def _dues(c: dict, now: int, rules: Rules):
    """Every time-based moment for this customer as (due, name, builder); builder(now) -> candidate|None."""
    plan = plan_of(c, rules)
    fired = c["fired"]
    # renewal
    if c["renews_at"] is not None and c["renews_at"] > now and plan is not None:
        period = format_ts(c["renews_at"])
        if f"renewal|{period}" not in fired:
            due = c["renews_at"] - rules.t("renewal")["lead_days"] * DAY
            yield due, (lambda at, plan=plan, period=period: _renewal(c, plan, period, at, rules))
    # fiscal year end
    if c["segment"] == "b2b" and c["fy_month"] and plan is not None:
        end = fiscal_year_end(c["fy_month"], now)
        if f"fiscal_year_end|{format_ts(end)}" in fired:
            end = fiscal_year_end(c["fy_month"], end)
        due = end - rules.t("fiscal_year_end")["lead_days"] * DAY
        yield due, (lambda at, plan=plan, end=end: _fiscal(c, plan, end, at, rules))
    # underuse
    if c["low_since"] is not None and plan is not None and plan.paid:
        if f"underuse|{plan.name}|{c['low_since']}" not in fired:
            due = c["low_since"] + rules.t("underuse")["days"] * DAY
            yield due, (lambda at, plan=plan: _underuse(c, plan, at, rules))
    # season
    if c["segment"]:
        year = to_dt(now).year
        for camp in rules.campaigns:
            if camp.segment != c["segment"]:
                continue
            for y in (year, year + 1):
                start, end = campaign_window(camp, y)
                if end > now and f"season|{camp.name}|{y}" not in fired:
                    yield start, (lambda at, camp=camp, y=y, end=end: _season(c, camp, y, end, at, rules))
                    break


def time_triggers(c: dict, now: int, rules: Rules) -> list[dict]:
    """Candidates of every time-based trigger due at or before `now`."""
    out = []
    for due, build in list(_dues(c, now, rules)):
        if due <= now:
            cand = build(now)
            if cand is not None:
                out.append(cand)
    return out


def next_due(c: dict, now: int, rules: Rules) -> int | None:
    """The next moment after `now` at which a time-based trigger or window changes."""
    dues = [due for due, _ in _dues(c, now, rules) if due > now]
    if c["basket"]:
        window = rules.t("co_purchase")["window_days"] * DAY
        dues.append(min(c["basket"].values()) + window)
    return min(dues) if dues else None


def _skip(c: dict, key: str, until: int) -> None:
    """A due moment that yields no offer still counts as evaluated for its period."""
    c["fired"][key] = until


def _renewal(c, plan, period, now, rules):
    cfg = rules.t("renewal")
    renews_at = c["renews_at"]
    peak, values = peak_utilisation(c, now, cfg["lookback_days"] * DAY)
    common = dict(priority=cfg["priority"], audience="decision_maker", valid_until=renews_at,
                  fire_until=renews_at + DAY)
    evidence = {"renews_at": period, "term": c["term"], "peak_utilisation": None if peak is None else round(peak, 4)}
    days = (renews_at - now) / DAY
    if peak is not None and peak >= cfg["high"]:
        target = next_tier(rules, plan)
        if target is not None:
            return propose(c, "renewal", UPSELL, {"plan": target.name}, period, now, evidence=evidence,
                           reason=(f"renews in {days:.0f} days; peak utilisation {peak:.0%} over "
                                   f"{cfg['lookback_days']} days on {plan.name}: {target.name} gives room to grow"),
                           **common)
    elif peak is not None and peak < cfg["low"] and plan.paid:
        target = downsell_tier(rules, plan, values, cfg["downsell_fit"])
        if target is not None:
            return propose(c, "renewal", DOWNSELL, {"plan": target.name}, period, now, evidence=evidence,
                           reason=(f"renews in {days:.0f} days; peak utilisation only {peak:.0%} on "
                                   f"{plan.name}: {target.name} fits and costs less"),
                           **common)
    if c["term"] == "monthly" and plan.paid:
        pct = cfg["annual_discount_pct"]
        return propose(c, "renewal", UPSELL, {"plan": plan.name, "term": "annual", "discount_pct": pct},
                       period, now, evidence=evidence,
                       reason=f"monthly {plan.name} renews in {days:.0f} days; annual term saves {pct:g}%",
                       **common)
    _skip(c, f"renewal|{period}", renews_at + DAY)
    return None


def _fiscal(c, plan, end, now, rules):
    cfg = rules.t("fiscal_year_end")
    period = format_ts(end)
    target = next_tier(rules, plan)
    if target is None:
        _skip(c, f"fiscal_year_end|{period}", end)
        return None
    return propose(c, "fiscal_year_end", UPSELL, {"plan": target.name}, period, now,
                   priority=cfg["priority"], audience="decision_maker",
                   reason=(f"fiscal year ends {format_ts(end - DAY)[:10]} (期末): budget left this year "
                           f"can move {plan.name} to {target.name}"),
                   evidence={"fiscal_year_end": format_ts(end - DAY)[:10], "fiscal_year_end_month": c["fy_month"]},
                   valid_until=end, fire_until=end)


def _underuse(c, plan, now, rules):
    cfg = rules.t("underuse")
    low_since = c["low_since"]
    key_until = now + 365 * DAY
    _peak, values = peak_utilisation(c, now, cfg["days"] * DAY)
    peak = max((u["value"] / u["limit"] for u in c["usage"].values() if u["limit"]), default=0)
    target = downsell_tier(rules, plan, values, cfg["downsell_fit"])
    if target is None:
        _skip(c, f"underuse|{plan.name}|{low_since}", key_until)
        return None
    return propose(c, "underuse", DOWNSELL, {"plan": target.name}, f"{plan.name}|{low_since}", now,
                   priority=cfg["priority"], audience="decision_maker",
                   reason=(f"utilisation below {cfg['threshold']:.0%} on {plan.name} for "
                           f"{cfg['days']} days; {target.name} fits and keeps the account"),
                   evidence={"low_since": format_ts(low_since), "latest_peak": round(peak, 4)},
                   valid_until=now + cfg["valid_days"] * DAY, fire_until=key_until)


def _season(c, camp, year, end, now, rules):
    picks = [s for s in camp.skus if s not in c["owned"]] or list(camp.skus)
    return propose(c, "season", CROSS_SELL, {"campaign": camp.name, "skus": picks}, f"{camp.name}|{year}", now,
                   priority=rules.t("season")["priority"],
                   audience="decision_maker" if c["segment"] == "b2b" else "user",
                   reason=f"{camp.name} campaign for {c['segment'].upper()} customers until {format_ts(end - DAY)[:10]}",
                   evidence={"campaign": camp.name, "segment": c["segment"]},
                   valid_until=end, fire_until=end + 366 * DAY)
