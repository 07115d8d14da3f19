"""The statistics of `upsell simulate`'s conversion table (streams.measure), against published
values, and the counting of decisions and conversions."""
from __future__ import annotations

import math

import pytest

from streams.measure import Measure, newcombe, table, two_proportion_p, wilson


def test_wilson_interval_of_a_published_example():
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion": 81/263
    lo, hi = wilson(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    assert wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12) and wilson(10, 10)[1] == pytest.approx(1.0)


def test_newcombe_difference_interval_of_a_published_example():
    # Newcombe (1998), "Interval estimation for the difference between independent proportions",
    # example (a): 56/70 - 48/80, method 10 (hybrid score): 0.0524 to 0.3339
    d, lo, hi = newcombe(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)


def test_two_proportion_test_equals_pearsons_chi_square_on_the_2x2_table():
    a, b, c, d = 56, 14, 48, 32                                   # 56/70 against 48/80
    chi2 = (a + b + c + d) * (a * d - b * c) ** 2 / ((a + b) * (c + d) * (a + c) * (b + d))
    p = two_proportion_p(56, 70, 48, 80)
    assert p == pytest.approx(math.erfc(math.sqrt(chi2 / 2))) and p == pytest.approx(0.0080, abs=1e-4)
    assert two_proportion_p(5, 10, 5, 10) == pytest.approx(1.0) and two_proportion_p(0, 10, 0, 10) == 1.0


def _decision(pid, trigger="renewal", held=False, **kw):
    p = {"proposal_id": pid, "trigger": trigger, "kind": "upsell", "created_at": "2026-01-07T09:00:00Z", **kw}
    if held:
        p["suppressed"] = {"reason": "holdout"}
    return p


def _converted(pid, held=False, revenue=None, **kw):
    return {"proposal_id": pid, "trigger": "renewal", "kind": "upsell", "status": "converted",
            "holdout": held, "revenue": revenue or {"expansion_mrr": 100.0}, **kw}


def test_decisions_conversions_revenue_and_uplift_are_counted_once_each():
    m = Measure()
    for i in range(10):
        m.add("proposal", _decision(f"t{i}"))
    for i in range(20):
        m.add("suppressed", _decision(f"h{i}", held=True))
    m.add("suppressed", {**_decision("x"), "suppressed": {"reason": "min_gap"}})   # not a decision held out
    for pid in ("t0", "t1", "t2", "t2"):                                          # a repeat on the wire
        m.add("status", _converted(pid))
    m.add("status", _converted("h0", held=True))
    m.add("status", {**_converted("t3"), "status": "declined"})
    row, total = m.rows()
    assert total["trigger"] == "total" and {k: total[k] for k in ("proposals", "converted", "held_out")} == \
        {k: row[k] for k in ("proposals", "converted", "held_out")}
    assert (row["proposals"], row["converted"], row["expansion_mrr"], row["declined"]) == (10, 3, 300.0, 1)
    assert (row["held_out"], row["held_converted"]) == (20, 1)
    assert row["uplift"] == pytest.approx(newcombe(3, 10, 1, 20))
    assert "+25.0%" in table(m)


def test_a_variant_is_tested_against_the_first_one():
    m = Measure()
    for var, n, k in (("a", 200, 20), ("b", 200, 50)):
        for i in range(n):
            m.add("proposal", _decision(f"{var}{i}", experiment="e", variant=var))
        for i in range(k):
            m.add("status", _converted(f"{var}{i}", experiment="e", variant=var))
    a, b = m.variant_rows()
    assert a["p_value"] is None and (b["rate"], b["significant"]) == (0.25, True)
    assert b["p_value"] == pytest.approx(two_proportion_p(50, 200, 20, 200))
