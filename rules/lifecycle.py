"""A proposal's life after the decision, in event time (docs/lifecycle.md).

Every proposal sent, and every decision held out (`proposals.suppressed`, reason `holdout`), is
tracked in its customer's document (`track`) until it ends. The engine calls `observe` after
each event is applied to the customer and `deadline` when the customer's earliest deadline
(`next_deadline`) is reached; both return status records for the `proposal-status` topic:

  converted  within the attribution window (`attribution_days` from created_at, and at least
             to valid_until; both ends included): a `proposal-outcomes` record `accepted`
             (`via: outcome`), or the customer did what was offered (`via: observed`): moved to
             the offered plan or above (upsell), to the annual term (term offer), to the offered
             lower plan (downsell), bought an offered SKU (cross-sell) or an order reaching the
             volume line's threshold. Also after `expired`, while the window is open.
  declined   a `proposal-outcomes` record `declined` while the offer is open.
  expired    valid_until passed with none of the others.
  withdrawn  the offer stopped being true while open (reason): `unhappy_customer` (an open
             high-severity ticket, low NPS or churn intent; upsell and cross-sell), `renewal_passed`
             (a renewal offer's contract renewed on other terms), `contract_ended` (the customer
             moved to an unpaid plan), `plan_changed` (a plan offer whose customer moved to a plan
             that no longer fits it). Doing what was offered is a conversion, never a withdrawal:
             its `converted` record tells a sender to stop as well.

A held-out decision gets `converted` (observed only) and `expired`, never `withdrawn` or
`declined`: when its offer stops being true it stops being tracked, as the proposal sent in its
place would have been withdrawn, so the treated and the held-out group are measured alike.

Pure functions of the customer document, the event and its time: live and backtest agree.
"""
from __future__ import annotations

import hashlib

from .config import Rules
from .guardrails import unhappy_reason
from .state import DISPLAY_KEYS
from .timeutil import DAY, format_ts
from .triggers import seq_sum

SCHEMA_VERSION = 1
CONVERTED, DECLINED, EXPIRED, WITHDRAWN = "converted", "declined", "expired", "withdrawn"
OPEN = "open"


def track(c: dict, p: dict, now: int, until: int, held: bool, rules: Rules) -> None:
    """Start tracking decision `p` (a proposal sent, or held out) made at `now`, valid until
    `until` (its first deadline)."""
    entry = {"id": p["proposal_id"], "trigger": p["trigger"], "kind": p["kind"],
             "offer": {k: v for k, v in p["offer"].items() if k not in DISPLAY_KEYS},
             "created": now, "until": until, "end": max(now + rules.attribution_days * DAY, until),
             "held": held, "state": OPEN}
    if "experiment" in p:
        entry["experiment"], entry["variant"] = p["experiment"], p["variant"]
    c["track"].append(entry)


def _deadline_of(e: dict) -> int:
    return e["until"] if e["state"] == OPEN else e["end"] + 1     # the window includes its end


def next_deadline(c: dict) -> int | None:
    """The earliest moment a tracked decision of this customer expires or stops being tracked."""
    track = c["track"]
    if not track:
        return None
    return min(_deadline_of(e) for e in track)


def deadline(c: dict, now: int, rules: Rules) -> list[dict]:
    """Stream time reached `now`: offers valid until then expire; decisions whose attribution
    window has closed after expiry stop being tracked."""
    out, keep = [], []
    for e in c["track"]:
        if e["state"] == OPEN and e["until"] <= now:
            out.append(_record(c, e, EXPIRED, e["until"]))
            e["state"] = EXPIRED
        if e["state"] == OPEN or e["end"] >= now:
            keep.append(e)
    c["track"] = keep
    return out


def observe(c: dict, topic: str, v: dict, now: int, before: tuple, rules: Rules) -> list[dict]:
    """An event of `topic` was applied to the customer at `now`; `before` is its (plan, term,
    renews_at) before. Returns the status records this causes, and ends what it ends."""
    out: list[dict] = []
    if topic == "proposal-outcomes":
        _outcome(c, v, now, rules, out)
        return out
    if topic == "feedback":
        why = unhappy_reason(c, now, rules)      # the guardrail's test, as at the next decision
        if why is not None:
            # a downsell stays: it is the offer for an unhappy customer
            _withdraw_where(c, lambda e: e["kind"] != "downsell", now, out, "unhappy_customer", why)
        return out
    keep = []
    for e in c["track"]:
        done = _fulfilled(c, e, topic, v, before, rules)
        if done is not None and now <= e["end"]:
            out.append(_record(c, e, CONVERTED, now, via="observed", revenue=done))
            continue
        if e["state"] == OPEN:
            why = _stopped(c, e, topic, v, before, rules)
            if why is not None:
                if not e["held"]:
                    out.append(_record(c, e, WITHDRAWN, now, reason=why[0], detail=why[1]))
                continue
        keep.append(e)
    c["track"] = keep
    return out


def _outcome(c: dict, v: dict, now: int, rules: Rules, out: list) -> None:
    outcome = v["outcome"]
    if outcome not in ("accepted", "declined"):
        return
    for i, e in enumerate(c["track"]):
        if e["id"] != v["proposal_id"] or e["held"]:
            continue
        if outcome == "accepted" and now <= e["end"]:
            out.append(_record(c, e, CONVERTED, now, via="outcome", revenue=_offered_value(c, e, rules)))
        elif outcome == "declined" and e["state"] == OPEN:
            out.append(_record(c, e, DECLINED, now))
        else:
            return
        del c["track"][i]
        return


def _withdraw_where(c: dict, match, now: int, out: list, reason: str, detail: str) -> None:
    """Withdraw the open decisions `match` picks (a held-out one stops being tracked)."""
    keep = []
    for e in c["track"]:
        if e["state"] == OPEN and match(e):
            if not e["held"]:
                out.append(_record(c, e, WITHDRAWN, now, reason=reason, detail=detail))
            continue
        keep.append(e)
    c["track"] = keep


# -------------------------------------------------------------- the offers --

def _price(rules: Rules, plan: str | None) -> float:
    p = rules.plan_by_name.get(plan) if plan else None
    return p.price if p is not None else 0.0


def _tier(rules: Rules, plan: str | None) -> int | None:
    p = rules.plan_by_name.get(plan) if plan else None
    return p.tier if p is not None else None


def _mrr(before: float, after: float) -> dict:
    return {"mrr_before": before, "mrr_after": after, "expansion_mrr": round(after - before, 2)}


def _term_mrr(rules: Rules, offer: dict) -> float:
    return round(_price(rules, offer["plan"]) * (1 - offer.get("discount_pct", 0) / 100), 2)


def _sku_price(rules: Rules, sku: str) -> float:
    return rules.products.get(sku, {}).get("price", 0.0)


def _fulfilled(c: dict, e: dict, topic: str, v: dict, before: tuple, rules: Rules) -> dict | None:
    """The revenue it moved if this event did what the tracked offer asked, else None."""
    offer = e["offer"]
    if topic in ("customers", "contracts"):
        plan_before, term_before, _ = before
        if "plan" not in offer:
            return None
        if "term" in offer:                                   # the annual term offer
            if term_before != "annual" and c["term"] == "annual":
                return _mrr(_price(rules, plan_before), _term_mrr(rules, offer))
            return None
        if c["plan"] == plan_before:
            return None
        now_tier, offered = _tier(rules, c["plan"]), _tier(rules, offer["plan"])
        if now_tier is None or offered is None:
            return None
        if (now_tier >= offered if e["kind"] != "downsell" else c["plan"] == offer["plan"]):
            return _mrr(_price(rules, plan_before), _price(rules, c["plan"]))
        return None
    if topic == "purchases":
        items = v["items"]
        if "line" in offer:
            return _volume(offer, v, rules)
        skus = set(offer.get("skus", ()))
        bought = [it for it in items if it["sku"] in skus]
        if not bought:
            return None
        value = 0.0
        for it in bought:
            value += it["qty"] * it.get("price", _sku_price(rules, it["sku"]))
        return {"order_value": round(value, 2)}
    return None


def _volume(offer: dict, v: dict, rules: Rules) -> dict | None:
    line = rules.volume_line(offer["line"])
    if line is None:
        return None
    if "sku" in offer:
        qty = sum(it["qty"] for it in v["items"] if it["sku"] == offer["sku"])
        if line.min_qty is not None and qty >= line.min_qty:
            return {"order_value": round(qty * _sku_price(rules, offer["sku"]), 2)}
        return None
    total = v.get("total")
    if total is None:           # as the volume trigger sums it
        total = seq_sum([it["qty"] * it.get("price", 0) for it in v["items"]])
    if line.min_total is not None and total >= line.min_total:
        return {"order_value": round(total, 2)}
    return None


def _offered_value(c: dict, e: dict, rules: Rules) -> dict:
    """The revenue an accepted offer moves, from the catalog: what the outcome record says
    was taken, priced as offered."""
    offer = e["offer"]
    if "plan" in offer:
        after = _term_mrr(rules, offer) if "term" in offer else _price(rules, offer["plan"])
        return _mrr(_price(rules, c["plan"]), after)
    if "line" in offer:
        if "sku" in offer:
            return {"order_value": round(offer["add_qty"] * _sku_price(rules, offer["sku"]), 2)}
        return {"order_value": round(offer["add_amount"], 2)}
    value = 0.0
    for sku in offer.get("skus", ()):
        value += _sku_price(rules, sku)
    return {"order_value": round(value, 2)}


def _stopped(c: dict, e: dict, topic: str, v: dict, before: tuple, rules: Rules) -> tuple[str, str] | None:
    """Why an open offer stopped being true with this event (customers, contracts), or None."""
    if topic not in ("customers", "contracts"):
        return None
    plan_before, _, renews_before = before
    offer = e["offer"]
    if c["plan"] != plan_before and plan_before is not None and _price(rules, plan_before) > 0 \
            and _price(rules, c["plan"]) == 0:
        return "contract_ended", f"moved from {plan_before} to the unpaid {c['plan']}"
    if e["trigger"] == "renewal" and topic == "contracts" and renews_before is not None \
            and c["renews_at"] is not None and c["renews_at"] > renews_before:
        return "renewal_passed", f"renewed on {c['plan']} ({c['term']}) until {format_ts(c['renews_at'])[:10]}"
    if "plan" in offer and c["plan"] != plan_before:
        return "plan_changed", f"moved from {plan_before} to {c['plan']}"
    return None


# --------------------------------------------------------------- records --

def status_id(proposal_id: str, state: str) -> str:
    """One id per proposal and state: what a consumer dedupes on."""
    return hashlib.blake2b(f"{proposal_id}\x1f{state}".encode(), digest_size=16).hexdigest()


def _record(c: dict, e: dict, state: str, now: int, **extra) -> dict:
    r = {"schema": SCHEMA_VERSION, "status_id": status_id(e["id"], state), "proposal_id": e["id"],
         "customer_id": c["id"], "trigger": e["trigger"], "kind": e["kind"], "status": state,
         "at": format_ts(now), "created_at": format_ts(e["created"]), "holdout": e["held"]}
    if "experiment" in e:
        r["experiment"], r["variant"] = e["experiment"], e["variant"]
    r.update(extra)
    return r
