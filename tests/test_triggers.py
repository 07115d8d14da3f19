"""Every trigger at its boundaries: one tick before and at each default number."""
from datetime import timedelta

import pytest

from rules.state import DISPLAY_KEYS
from tests.driver import MS, Driver, dt

T0 = dt(2026, 5, 4, 9)   # a Monday in May: no campaign, no fiscal year end near for month 12
D = timedelta(days=1)


def bare(offer: dict) -> dict:
    """An offer without the display names proposals add (tests/test_contract.py checks those)."""
    return {k: v for k, v in offer.items() if k not in DISPLAY_KEYS}


def usage(d: Driver, when, value, metric="seats", limit=None):
    kw = {"limit": limit} if limit is not None else {}
    return d.send("usage", when, metric=metric, value=value, **kw)


# ------------------------------------------------------------ usage_limit --
@pytest.mark.parametrize("value,expected", [(39.99, []), (40, [("usage_limit", 0.8, 80)]),
                                            (49.99, [("usage_limit", 0.8, 80)]),
                                            (50, [("usage_limit", 1.0, 90)])])
def test_usage_limit_levels(value, expected):
    d = Driver().saas(T0, fiscal_year_end_month=12)
    usage(d, T0 + D, value)
    got = [(p["trigger"], p["evidence"]["level"], p["priority"]) for p in d.proposals]
    assert got == expected
    if expected:
        p = d.proposals[0]
        assert bare(p["offer"]) == {"plan": "pro"} and p["kind"] == "upsell" and p["audience"] == "admin"
        assert p["evidence"] == {"metric": "seats", "value": value, "limit": 50, "level": expected[0][1]}
        assert p["created_at"] == "2026-05-05T09:00:00Z" and p["valid_until"] == "2026-05-19T09:00:00Z"
        assert "seats" in p["reason"] and "pro allows 200" in p["reason"]


def test_usage_limit_fires_once_per_level_and_month_and_rearms():
    d = Driver().saas(T0, fiscal_year_end_month=12)
    usage(d, T0 + D, 41)
    usage(d, T0 + 9 * D, 42)                         # same level, same month: nothing new
    assert d.triggers() == ["usage_limit"]
    usage(d, dt(2026, 6, 1, 9), 43)                  # next billing period: re-armed
    assert d.triggers() == ["usage_limit", "usage_limit"]


def test_free_plan_goes_to_cheapest_paid_plan_and_event_limit_wins():
    d = Driver().saas(T0, plan="free", segment="b2c")
    usage(d, T0 + D, 8, limit=10)
    assert bare(d.proposals[0]["offer"]) == {"plan": "basic"}
    assert d.proposals[0]["evidence"]["limit"] == 10


def test_top_tier_has_nothing_to_offer():
    d = Driver().saas(T0, plan="enterprise", segment="b2c")
    usage(d, T0 + D, 2000)
    assert d.proposals == [] and d.suppressed == []


# --------------------------------------------------------- usage_forecast --
def _trend(d, days_to_limit):
    # 3 daily samples rising 2 seats/day; the last one leaves `days_to_limit` days at that slope
    last = 50 - 2 * days_to_limit
    for i, v in enumerate((last - 4, last - 2, last)):
        usage(d, T0 + (i + 1) * D, v)


@pytest.mark.parametrize("days,fires", [(14, True), (14.01, False)])
def test_usage_forecast_horizon(days, fires):
    d = Driver().saas(T0, fiscal_year_end_month=12)
    _trend(d, days)
    assert ("usage_forecast" in d.triggers()) is fires
    if fires:
        assert d.proposals[0]["evidence"]["days_to_limit"] == pytest.approx(days)


def test_sums_add_left_to_right_on_every_python():
    from rules.triggers import seq_sum
    # 3.12's sum() compensates and gives 1.0 here; decisions must not change with the interpreter
    assert seq_sum([1e16, 1.0, -1e16]) == 0.0
    assert seq_sum([1, 2, 3]) == 6 and isinstance(seq_sum([1, 2, 3]), int)


def test_usage_forecast_needs_three_days():
    d = Driver().saas(T0, fiscal_year_end_month=12)
    usage(d, T0 + D, 10)
    usage(d, T0 + 2 * D, 30)
    assert d.triggers() == []


# ---------------------------------------------------------------- renewal --
def _renewal(peak, term="annual", plan="pro"):
    d = Driver().saas(T0, plan=plan, segment="b2c")
    renews = T0 + 100 * D
    d.send("contracts", T0, plan=plan, term=term, renews_at=renews.strftime("%Y-%m-%dT%H:%M:%SZ"))
    if peak is not None:
        usage(d, renews - 61 * D, peak * 200)
    return d, renews - 60 * D


def test_renewal_fires_at_exactly_60_days_before():
    d, due = _renewal(0.7)
    d.advance(due)                     # events and timers strictly before `due`
    assert d.triggers() == []
    d.settle(due)
    assert d.triggers() == ["renewal"]
    p = d.proposals[0]
    assert p["created_at"] == due.strftime("%Y-%m-%dT%H:%M:%SZ") and bare(p["offer"]) == {"plan": "enterprise"}
    assert p["audience"] == "decision_maker" and p["valid_until"] == (due + 60 * D).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("peak,kind,offer", [
    (0.7, "upsell", {"plan": "enterprise"}),
    (0.6999, None, None),
    (0.2, None, None),
    (0.1999, "downsell", {"plan": "basic"}),
])
def test_renewal_by_utilisation(peak, kind, offer):
    d, due = _renewal(peak)
    d.settle(due)
    got = [(p["kind"], bare(p["offer"])) for p in d.proposals]
    assert got == ([(kind, offer)] if kind else [])


def test_renewal_monthly_term_offers_annual_discount():
    d, due = _renewal(0.5, term="monthly")
    d.settle(due)
    assert bare(d.proposals[0]["offer"]) == {"plan": "pro", "term": "annual", "discount_pct": 15}


def test_renewal_utilisation_only_counts_the_last_30_days():
    d = Driver().saas(T0, plan="pro", segment="b2c")
    renews = T0 + 100 * D
    d.send("contracts", T0, plan="pro", term="annual", renews_at=renews.strftime("%Y-%m-%dT%H:%M:%SZ"))
    usage(d, renews - 90 * D, 180)     # 90% but 30 days before the due moment: outside the window
    usage(d, renews - 61 * D, 100)     # 50%
    d.settle(renews - 60 * D)
    assert "usage_limit" in d.triggers() and "renewal" not in d.triggers()


# -------------------------------------------------------- fiscal_year_end --
def test_fiscal_year_end_45_days_before_march_end():
    d = Driver().saas(dt(2026, 1, 5, 9), fiscal_year_end_month=3)
    due = dt(2026, 4, 1) - 45 * D      # 2026-02-15 00:00
    d.advance(due)
    assert "fiscal_year_end" not in d.triggers()
    d.settle(due)
    p = [p for p in d.proposals if p["trigger"] == "fiscal_year_end"][0]
    assert p["created_at"] == "2026-02-15T00:00:00Z" and p["audience"] == "decision_maker"
    assert bare(p["offer"]) == {"plan": "pro"} and p["evidence"]["fiscal_year_end"] == "2026-03-31"


def test_fiscal_year_end_only_for_b2b():
    d = Driver().saas(dt(2026, 1, 5, 9), segment="b2c", fiscal_year_end_month=3)
    d.settle(dt(2026, 3, 1))
    assert "fiscal_year_end" not in d.triggers()


# ------------------------------------------------------ purchase / volume --
def order(d, when, *items, cid="c-1", order_id=None):
    d.send("purchases", when, customer_id=cid, order_id=order_id or f"o-{when.isoformat()}",
           items=[{"sku": s, "qty": q, "price": p} for s, q, p in items])


def test_purchase_cross_sells_relations_not_owned():
    d = Driver().saas(T0, plan=None, segment="b2b")
    order(d, T0 + D, ("mouse", 1, 3000))
    order(d, T0 + 10 * D, ("pc-laptop", 1, 150000))
    p = [p for p in d.proposals if p["trigger"] == "purchase"][-1]
    assert bare(p["offer"]) == {"skus": ["privacy-filter", "laptop-bag"]} and p["kind"] == "cross_sell"


@pytest.mark.parametrize("total,fires", [(3999, False), (4000, True), (4999, True), (5000, False)])
def test_volume_free_shipping_line(total, fires):
    d = Driver().saas(T0, plan=None, segment="b2c")
    order(d, T0 + D, ("mug", 1, total))
    got = [p for p in d.proposals if p["trigger"] == "volume"]
    assert bool(got) is fires
    if fires:
        assert bare(got[0]["offer"]) == {"line": "free-shipping", "add_amount": 5000 - total}


@pytest.mark.parametrize("qty,fires", [(7, False), (8, True), (9, True), (10, False)])
def test_volume_bulk_line(qty, fires):
    d = Driver().saas(T0, plan=None, segment="b2c")
    order(d, T0 + D, ("coffee-filter", qty, 100))
    assert bool([p for p in d.proposals if p["trigger"] == "volume"]) is fires


# ------------------------------------------------------------ co_purchase --
def _co(others_with_both, others_with_a_only=0):
    d = Driver()
    t = T0
    for i in range(others_with_both):
        order(d, t, ("mug", 1, 1500), ("coffee-filter", 1, 400), cid=f"o-{i}")
    for i in range(others_with_a_only):
        order(d, t, ("mug", 1, 1500), cid=f"a-{i}")
    order(d, t + D, ("mug", 1, 1500), cid="me")
    return [p for p in d.proposals if p["trigger"] == "co_purchase" and p["customer_id"] == "me"]


def test_co_purchase_min_support():
    assert _co(2) == []
    got = _co(3)
    assert bare(got[0]["offer"]) == {"skus": ["coffee-filter"]} and got[0]["evidence"]["support"] == [3]


def test_co_purchase_min_confidence():
    assert _co(3, others_with_a_only=7)[0]["evidence"]["confidence"] == [0.3]    # 3/10
    assert _co(3, others_with_a_only=8) == []                                    # 3/11


@pytest.mark.parametrize("later,fires", [(90 * D - MS, True), (90 * D, False)])
def test_co_purchase_window_expires_after_90_days(later, fires):
    d = Driver()
    for i in range(3):
        order(d, T0, ("mug", 1, 1500), ("coffee-filter", 1, 400), cid=f"o-{i}")
    order(d, T0 + later, ("mug", 1, 1500), cid="me")
    assert bool([p for p in d.proposals if p["customer_id"] == "me" and p["trigger"] == "co_purchase"]) is fires


# --------------------------------------------------------------- underuse --
@pytest.mark.parametrize("ratio,fires", [(0.1999, True), (0.2, False)])
def test_underuse_after_30_days_below_20_percent(ratio, fires):
    d = Driver().saas(T0, plan="pro", segment="b2c")
    for m in ("seats", "storage_gb", "api_calls"):
        usage(d, T0 + D, 0.01 * {"seats": 200, "storage_gb": 1000, "api_calls": 1_000_000}[m], metric=m)
    usage(d, T0 + 2 * D, ratio * 200)
    d.advance(T0 + D + 30 * D)
    assert "underuse" not in d.triggers()
    d.settle(T0 + D + 30 * D)
    assert ("underuse" in d.triggers()) is fires
    if fires:
        p = d.proposals[-1]
        assert p["kind"] == "downsell" and bare(p["offer"]) == {"plan": "basic"}


# ----------------------------------------------------------------- season --
def test_season_starts_on_march_first_for_b2b():
    d = Driver().saas(dt(2026, 2, 20, 9), plan=None, segment="b2b")
    d.advance(dt(2026, 3, 1))
    assert "season" not in d.triggers()
    d.settle(dt(2026, 3, 1))
    p = d.proposals[-1]
    assert p["trigger"] == "season" and p["created_at"] == "2026-03-01T00:00:00Z"
    assert p["offer"]["campaign"] == "new-hires" and p["valid_until"] == "2026-04-01T00:00:00Z"


def test_season_not_for_other_segment():
    d = Driver().saas(dt(2026, 2, 20, 9), plan=None, segment="b2c")
    d.settle(dt(2026, 3, 10))
    assert "season" not in d.triggers()
