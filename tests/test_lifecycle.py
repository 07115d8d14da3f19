"""A decision's life after it is made (rules.lifecycle), each transition at an explicit event
time: converted one tick inside the attribution window and not one tick outside, declined,
expired at valid_until, withdrawn for each reason, and a held-out decision measured alike."""
from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from rules.config import load_rules
from rules.engine import PartitionEngine
from streams.recorded import dumps as dumps_customer
from tests.driver import MS, Driver, dt

T0 = dt(2026, 5, 4, 9)
D = timedelta(days=1)
RULES = load_rules()


def iso(when) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def upsell(rules=RULES, plan="basic") -> tuple[Driver, dict]:
    """A usage_limit upsell made at T0 + 1 day, valid 14 days (basic -> pro by default)."""
    d = Driver(rules).saas(T0, plan=plan, fiscal_year_end_month=12)
    d.send("usage", T0 + D, metric="seats", value={"basic": 41, "pro": 170}[plan])
    made = (d.proposals + [s for s in d.suppressed if s["suppressed"]["reason"] == "holdout"])[0]
    assert made["trigger"] == "usage_limit" and made["valid_until"] == iso(T0 + 15 * D)
    return d, made


def states(d: Driver) -> list[tuple[str, str]]:
    return [(r["status"], r["at"]) for r in d.statuses]


def test_moving_to_the_offered_plan_converts_with_its_expansion_mrr():
    d, p = upsell()
    d.send("customers", T0 + 3 * D, plan="pro")
    [r] = d.statuses
    assert r["status"] == "converted" and r["via"] == "observed" and r["proposal_id"] == p["proposal_id"]
    assert r["revenue"] == {"mrr_before": 5000, "mrr_after": 20000, "expansion_mrr": 15000}
    assert r["at"] == iso(T0 + 3 * D) and r["created_at"] == p["created_at"] and r["holdout"] is False
    d.settle(T0 + 40 * D)
    assert len(d.statuses) == 1                        # ended: no expiry after it


@pytest.mark.parametrize("after,converted", [(30 * D, True), (30 * D + MS, False)])
def test_a_conversion_counts_within_the_attribution_window_also_after_expiry(after, converted):
    d, _ = upsell()
    d.send("customers", T0 + D + after, plan="enterprise")          # the offered plan or above
    expected = [("expired", iso(T0 + 15 * D))]
    if converted:
        expected.append(("converted", iso(T0 + D + after)))
    assert states(d) == expected


def test_an_accepted_outcome_converts_and_a_declined_one_declines():
    d, p = upsell()
    d.send("proposal-outcomes", T0 + 2 * D, proposal_id=p["proposal_id"], trigger="usage_limit",
           offer={"plan": "pro"}, outcome="accepted")
    [r] = d.statuses
    assert (r["status"], r["via"], r["revenue"]["expansion_mrr"]) == ("converted", "outcome", 15000)
    d, p = upsell()
    d.send("proposal-outcomes", T0 + 2 * D, proposal_id=p["proposal_id"], trigger="usage_limit",
           offer={"plan": "pro"}, outcome="declined")
    d.send("customers", T0 + 3 * D, plan="pro")                    # ended at the decline
    assert states(d) == [("declined", iso(T0 + 2 * D))]


def test_an_offer_expires_at_valid_until_not_a_tick_before():
    d, _ = upsell()
    d.advance(T0 + 15 * D)
    assert d.statuses == []
    d.settle(T0 + 15 * D)
    assert states(d) == [("expired", iso(T0 + 15 * D))]


def test_withdrawn_when_the_customer_becomes_unhappy():
    d, _ = upsell()
    d.send("feedback", T0 + 2 * D, type="ticket", ticket_id="t-1", severity="high", status="open")
    [r] = d.statuses
    assert (r["status"], r["reason"]) == ("withdrawn", "unhappy_customer") and "t-1" in r["detail"]
    d.settle(T0 + 20 * D)
    assert len(d.statuses) == 1                                    # no expiry after a withdrawal


def test_withdrawn_when_the_customer_leaves_for_an_unpaid_plan_or_another_plan():
    d, _ = upsell()
    d.send("customers", T0 + 2 * D, plan="free")
    assert [(r["status"], r["reason"]) for r in d.statuses] == [("withdrawn", "contract_ended")]
    d, _ = upsell(plan="pro")                                      # pro -> enterprise offered
    d.send("customers", T0 + 2 * D, plan="basic")
    assert [(r["status"], r["reason"]) for r in d.statuses] == [("withdrawn", "plan_changed")]


def test_the_window_lasts_at_least_as_long_as_the_offer_is_valid():
    d, _ = upsell(dataclasses.replace(RULES, attribution_days=7))
    d.send("customers", T0 + 15 * D, plan="pro")             # at valid_until (14 days), 7 of attribution
    assert [(r["status"], r.get("via")) for r in d.statuses] == [("expired", None), ("converted", "observed")]


def _renewal(term="monthly", peak=0.5):
    d = Driver().saas(T0, plan="pro", segment="b2c")
    renews = T0 + 100 * D
    d.send("contracts", T0, plan="pro", term=term, renews_at=iso(renews))
    d.send("usage", renews - 61 * D, metric="seats", value=peak * 200)
    d.settle(renews - 60 * D)
    [p] = [p for p in d.proposals if p["trigger"] == "renewal"]
    return d, p, renews


def test_the_annual_term_offer_converts_when_the_term_becomes_annual():
    d, p, renews = _renewal()
    d.send("contracts", renews - D, plan="pro", term="annual", renews_at=iso(renews + 365 * D))
    [r] = [r for r in d.statuses if r["proposal_id"] == p["proposal_id"]]
    assert (r["status"], r["revenue"]) == ("converted", {"mrr_before": 20000, "mrr_after": 17000,
                                                         "expansion_mrr": -3000})


def test_withdrawn_when_the_renewal_passes_on_other_terms():
    d, p, renews = _renewal()
    d.send("contracts", renews - 10 * D, plan="pro", term="monthly", renews_at=iso(renews + 30 * D))
    [r] = [r for r in d.statuses if r["proposal_id"] == p["proposal_id"]]
    assert (r["status"], r["reason"]) == ("withdrawn", "renewal_passed")


def test_a_downsell_converts_when_the_renewal_goes_through_on_the_lower_plan():
    d, p, renews = _renewal(term="annual", peak=0.1)
    assert p["kind"] == "downsell" and p["offer"]["plan"] == "basic"
    d.send("contracts", renews, plan="basic", term="annual", renews_at=iso(renews + 365 * D))
    mine = [r for r in d.statuses if r["proposal_id"] == p["proposal_id"]]    # valid until the renewal:
    assert [r["status"] for r in mine] == ["expired", "converted"]             # it ends as it goes through
    assert mine[1]["revenue"]["expansion_mrr"] == -15000


def test_a_cross_sell_converts_on_buying_an_offered_item_with_its_order_value():
    d = Driver().saas(T0, plan=None, segment="b2b")
    d.send("purchases", T0 + D, order_id="o-1", items=[{"sku": "pc-laptop", "qty": 1, "price": 150000}])
    [p] = [p for p in d.proposals if p["trigger"] == "purchase"]
    d.send("purchases", T0 + 2 * D, order_id="o-2", items=[{"sku": "laptop-bag", "qty": 2, "price": 5500},
                                                           {"sku": "mug", "qty": 1, "price": 1500}])
    [r] = d.statuses
    assert (r["proposal_id"], r["status"], r["revenue"]) == (p["proposal_id"], "converted", {"order_value": 11000})


def test_a_held_out_decision_converts_and_expires_but_is_never_withdrawn():
    held = dataclasses.replace(RULES, holdout=1.0)
    d, p = upsell(held)
    assert d.proposals == [] and p["suppressed"]["reason"] == "holdout"
    d.send("customers", T0 + 3 * D, plan="pro")
    [r] = d.statuses
    assert (r["status"], r["via"], r["holdout"]) == ("converted", "observed", True)
    d, _ = upsell(held)
    d.send("feedback", T0 + 2 * D, type="churn_intent")             # its twin would be withdrawn:
    d.send("customers", T0 + 3 * D, plan="pro")                    # no longer followed
    d.settle(T0 + 40 * D)
    assert d.statuses == []
    d, _ = upsell(held)
    d.settle(T0 + 40 * D)
    assert [(r["status"], r["holdout"]) for r in d.statuses] == [("expired", True)]


def test_a_restored_engine_keeps_the_deadlines():
    """The lifecycle lives in the customer document: an engine rebuilt from it expires the offer."""
    d, _ = upsell()
    docs = [dumps_customer(c) for _, c in d.engine.take_dirty()]
    eng = PartitionEngine.restore(RULES, 0, d.engine.meta(), docs)
    out = eng.tick(int((T0 + 15 * D).timestamp() * 1000) + 1)
    assert [(kind, r["status"]) for kind, r in out] == [("status", "expired")]
