"""Guardrails: never a pushy seller (docs/rules.md).

`arbitrate` takes every candidate that fired for one customer at one moment
and returns (emitted, suppressed). Candidates are ranked by priority (then
trigger and proposal id, so ties are deterministic); each is checked in turn:

  cooldown         the same offer was declined within decline_cooldown_days
  unhappy_customer open high-severity ticket, low NPS, churn intent (upsell and cross-sell only)
  quiet_period     upsell within quiet_days of signup (free plan at its hard limit excepted)
  outranked        a higher-priority proposal won at this same moment
  min_gap          a proposal was emitted within min_gap_days
  frequency_cap    cap_count proposals were emitted within cap_window_days
  holdout          none of the above: it would have been sent, but the customer is in the
                   holdout group (rules.experiments.held_out), so it is recorded, not sent

An offer under test is first made the customer's variant of it (`with_variant`).

Every decision, emitted or suppressed, marks the trigger level as fired for
its period, so a suppressed level is reported once, not on every event.
"""
from __future__ import annotations

from .config import Rules
from .state import offer_key, prune
from .timeutil import DAY, format_ts
from .experiments import experiment_for, held_out, variant_of
from .triggers import DOWNSELL, UPSELL, proposal_id


def unhappy_reason(c: dict, now: int, rules: Rules) -> str | None:
    g = rules.guardrails
    if c["tickets"]:
        return f"open high-severity ticket {c['tickets'][0]}"
    if c["nps_low_at"] is not None and now - c["nps_low_at"] < g["nps_window_days"] * DAY:
        return f"NPS <= {g['unhappy_nps_max']} on {format_ts(c['nps_low_at'])[:10]}"
    if c["churn_at"] is not None and now - c["churn_at"] < g["churn_window_days"] * DAY:
        return f"churn intent on {format_ts(c['churn_at'])[:10]}"
    return None


def _check(c: dict, cand: dict, now: int, rules: Rules, winner: dict | None) -> tuple[str, str] | None:
    g = rules.guardrails
    declined = c["declined"].get(offer_key(cand["offer"]))
    if declined is not None and now - declined < g["decline_cooldown_days"] * DAY:
        return "cooldown", f"same offer declined on {format_ts(declined)[:10]}"
    if cand["kind"] != DOWNSELL:
        why = unhappy_reason(c, now, rules)
        if why:
            return "unhappy_customer", why
    if (cand["kind"] == UPSELL and not cand["_quiet_exempt"] and c["signup_at"] is not None
            and now - c["signup_at"] < g["quiet_days"] * DAY):
        return "quiet_period", f"signed up {format_ts(c['signup_at'])[:10]}, within {g['quiet_days']} days"
    if winner is not None:
        return "outranked", f"{winner['trigger']} (priority {winner['priority']}) won at the same moment"
    if c["sent"] and now - c["sent"][-1] < g["min_gap_days"] * DAY:
        return "min_gap", f"last proposal {format_ts(c['sent'][-1])}, within {g['min_gap_days']} days"
    if len(c["sent"]) >= g["cap_count"]:
        return "frequency_cap", f"{len(c['sent'])} proposals within {g['cap_window_days']} days"
    return None


def arbitrate(c: dict, candidates: list[dict], now: int, rules: Rules) -> tuple[list[dict], list[dict]]:
    if not candidates:
        return [], []
    if rules.experiments:
        candidates = [with_variant(c, x, rules) for x in candidates]
    prune(c, now, rules)
    fired = c["fired"]
    candidates = [x for x in candidates if x["_fire_key"] not in fired]   # once per period
    emitted, suppressed = [], []
    winner = None
    for cand in sorted(candidates, key=lambda x: (-x["priority"], x["trigger"], x["proposal_id"])):
        c["fired"][cand["_fire_key"]] = cand["_fire_until"]
        for key in cand.get("_also_fire", ()):
            c["fired"][key] = cand["_fire_until"]
        verdict = _check(c, cand, now, rules, winner)
        out = public(cand, rules)
        if verdict is None:
            winner = cand
            c["sent"].append(now)       # held out too: the state goes on as if it had been sent
            why = held_out(rules, c["id"], cand["trigger"]) if rules.holdout or rules.holdout_by_trigger else None
            if why is None:
                emitted.append(out)
            else:
                out["suppressed"] = {"reason": "holdout", "detail": why}
                suppressed.append(out)
        else:
            out["suppressed"] = {"reason": verdict[0], "detail": verdict[1]}
            suppressed.append(out)
    return emitted, suppressed


def with_variant(c: dict, cand: dict, rules: Rules) -> dict:
    """The candidate as the customer's variant of its trigger's experiment has it: the variant's
    offer keys set (the variant is part of the offer its proposal_id hashes), its words added to
    the reason, and `experiment` and `variant` named. Without an experiment, as it is."""
    experiment = experiment_for(rules, cand["trigger"])
    if experiment is None:
        return cand
    v = variant_of(experiment, c["id"])
    offer = {**cand["offer"], **v.offer}
    period = cand["_fire_key"].split("|", 1)[1]
    return {**cand, "proposal_id": proposal_id(c["id"], cand["trigger"], offer, period), "offer": offer,
            "reason": f"{cand['reason']} {v.reason}" if v.reason else cand["reason"],
            "experiment": experiment.name, "variant": v.name}


def public(cand: dict, rules: Rules) -> dict:
    """The decision as published: internal keys dropped, the offer's parts named for people."""
    out = {k: v for k, v in cand.items() if not k.startswith("_")}
    out["offer"] = with_display_names(cand["offer"], rules)
    return out


def with_display_names(offer: dict, rules: Rules) -> dict:
    """The offer with the catalog's display names of its plan (plan_name) and SKUs (sku_names, in
    the order of skus; sku_name for one sku)."""
    named = dict(offer)
    if "plan" in offer:
        plan = rules.plan_by_name.get(offer["plan"])
        named["plan_name"] = plan.display_name if plan is not None else offer["plan"]
    if "skus" in offer:
        named["sku_names"] = [rules.products.get(s, {}).get("name", s) for s in offer["skus"]]
    if "sku" in offer:
        named["sku_name"] = rules.products.get(offer["sku"], {}).get("name", offer["sku"])
    return named
