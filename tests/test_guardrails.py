"""Guardrails at their boundaries, and arbitration at one moment."""
from datetime import timedelta

import pytest

from tests.driver import MS, Driver, dt

T0 = dt(2026, 5, 4, 9)
D = timedelta(days=1)
ISO = "%Y-%m-%dT%H:%M:%SZ"


def seats(d, when, value, cid="c-1"):
    d.send("usage", when, customer_id=cid, metric="seats", value=value)


@pytest.mark.parametrize("after,reason", [(14 * D - MS, "quiet_period"), (14 * D, None)])
def test_quiet_period_after_signup(after, reason):
    d = Driver().saas(T0, signup=T0, fiscal_year_end_month=12)
    seats(d, T0 + after, 45)
    assert d.reasons() == ([("usage_limit", reason)] if reason else [])
    assert d.triggers() == ([] if reason else ["usage_limit"])


def test_quiet_period_lets_a_free_plan_at_its_hard_limit_through():
    d = Driver().saas(T0, plan="free", signup=T0, segment="b2c")
    seats(d, T0 + D, 2.5)                    # 83% of 3: quiet
    seats(d, T0 + 2 * D, 3)                  # 100% on free: exactly when they want more
    assert d.reasons() == [("usage_limit", "quiet_period")]
    assert d.triggers() == ["usage_limit"] and d.proposals[0]["evidence"]["level"] == 1.0


@pytest.mark.parametrize("score,suppressed", [(6, True), (7, False)])
def test_low_nps_suppresses_upsell(score, suppressed):
    d = Driver().saas(T0, fiscal_year_end_month=12)
    d.send("feedback", T0 + D, type="nps", score=score)
    seats(d, T0 + 2 * D, 45)
    assert (d.reasons() == [("usage_limit", "unhappy_customer")]) is suppressed


@pytest.mark.parametrize("after,suppressed", [(30 * D - MS, True), (30 * D, False)])
def test_low_nps_window(after, suppressed):
    d = Driver().saas(T0, fiscal_year_end_month=12)
    d.send("feedback", T0, type="nps", score=3)
    seats(d, T0 + after, 45)
    assert bool(d.suppressed) is suppressed


def test_open_high_ticket_suppresses_upsell_and_cross_sell_but_not_downsell():
    d = Driver().saas(T0, plan="pro", segment="b2c")
    d.send("feedback", T0 + D, type="ticket", ticket_id="t1", severity="high", status="open")
    seats(d, T0 + 2 * D, 170)
    d.send("purchases", T0 + 3 * D, order_id="o1", items=[{"sku": "pc-laptop", "qty": 1, "price": 1}])
    assert d.reasons() == [("usage_limit", "unhappy_customer"), ("purchase", "unhappy_customer")]
    renews = T0 + 100 * D
    seats(d, renews - 65 * D, 10)            # low utilisation: downsell at renewal stays allowed
    d.send("contracts", T0 + 4 * D, plan="pro", term="annual", renews_at=renews.strftime(ISO))
    d.settle(renews - 60 * D)
    assert [p["kind"] for p in d.proposals] == ["downsell"]


def test_closed_ticket_and_medium_severity_do_not_suppress():
    d = Driver().saas(T0, fiscal_year_end_month=12)
    d.send("feedback", T0 + D, type="ticket", ticket_id="t1", severity="high", status="open")
    d.send("feedback", T0 + 2 * D, type="ticket", ticket_id="t1", severity="high", status="closed")
    d.send("feedback", T0 + 2 * D, type="ticket", ticket_id="t2", severity="medium", status="open")
    seats(d, T0 + 3 * D, 45)
    assert d.triggers() == ["usage_limit"]


def test_churn_intent_suppresses():
    d = Driver().saas(T0, fiscal_year_end_month=12)
    d.send("feedback", T0 + D, type="churn_intent")
    seats(d, T0 + 2 * D, 45)
    assert d.reasons() == [("usage_limit", "unhappy_customer")]


@pytest.mark.parametrize("gap,reason", [(7 * D - MS, "min_gap"), (7 * D, None)])
def test_min_gap_of_seven_days(gap, reason):
    d = Driver().saas(T0, fiscal_year_end_month=12)
    seats(d, T0 + D, 45)
    d.send("usage", T0 + D + gap, metric="storage_gb", value=95)
    assert d.reasons() == ([("usage_limit", reason)] if reason else [])


def test_at_most_two_in_thirty_days():
    d = Driver().saas(T0, fiscal_year_end_month=12)
    seats(d, dt(2026, 6, 1), 45)
    d.send("usage", dt(2026, 6, 8), metric="storage_gb", value=95)
    d.send("usage", dt(2026, 6, 15), metric="api_calls", value=95000)
    assert d.reasons() == [("usage_limit", "frequency_cap")]
    seats(d, dt(2026, 7, 1), 45)             # 30 days after the first one: room again
    assert len(d.proposals) == 3


@pytest.mark.parametrize("after,reason", [(90 * D - MS, "cooldown"), (90 * D, None)])
def test_declined_offer_cooldown(after, reason):
    d = Driver().saas(T0, fiscal_year_end_month=12)
    seats(d, T0 + D, 45)
    p = d.proposals[0]
    d.send("proposal-outcomes", T0 + 2 * D, proposal_id=p["proposal_id"], trigger=p["trigger"],
           offer=p["offer"], outcome="declined")
    d.send("usage", T0 + 2 * D + after, metric="storage_gb", value=95)   # same offer: plan pro
    assert d.reasons() == ([("usage_limit", reason)] if reason else [])


def test_highest_priority_wins_at_the_same_moment():
    d = Driver().saas(T0, fiscal_year_end_month=12)
    for i, v in enumerate((30, 34, 38)):         # a steep trend ...
        seats(d, dt(2026, 6, 1 + i), v)
    assert d.triggers() == ["usage_forecast"]
    seats(d, dt(2026, 6, 20), 50)                # ... later, at the limit: one proposal, the best
    d2 = Driver().saas(T0, fiscal_year_end_month=12)
    for i, v in enumerate((30, 36, 41)):         # 82%: usage_limit (80) and usage_forecast (70) at once
        seats(d2, dt(2026, 6, 1 + i), v)
    assert d2.triggers() == ["usage_limit"]
    assert d2.reasons() == [("usage_forecast", "outranked")]


def test_suppressed_proposals_carry_the_full_proposal_and_a_reason():
    d = Driver().saas(T0, signup=T0, fiscal_year_end_month=12)
    seats(d, T0 + D, 45)
    s = d.suppressed[0]
    assert s["suppressed"]["reason"] == "quiet_period" and "within 14 days" in s["suppressed"]["detail"]
    assert s["proposal_id"] and s["offer"] == {"plan": "pro", "plan_name": "Pro"}
