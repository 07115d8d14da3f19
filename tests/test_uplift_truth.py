"""The measurement is honest: on a generated stream whose effect is known (`upsell generate`'s
treated and control rates), the uplift `upsell simulate` reports has the truth inside its 95%
interval, and two variants with the same true rate are not called significantly different.

The generated customers change plan and term only when an offer moves them, so for the plan
and term offers the true rates are exactly the generator's, as long as one customer's offers do
not overlap (one plan change would convert them all): the rules here keep 70 days between a
customer's decisions, longer than any attribution window. Shoppers also buy on their own, which
adds the same baseline to both groups of a cross-sell offer."""
from __future__ import annotations

import re

import pytest

from rules.config import default_rules_text, parse_rules
from streams.backtest import Tally, backtest_lines
from streams.generate import Effect, generate
from streams.measure import newcombe

TREATED, CONTROL = 0.30, 0.08
PLAN_OFFERS = ("usage_limit", "usage_forecast", "renewal", "fiscal_year_end", "underuse")


@pytest.fixture(scope="module")
def measured():
    text = re.sub(r"\[holdout\]\nshare = [0-9.]+", "[holdout]\nshare = 0.3", default_rules_text())
    text = text.replace("min_gap_days = 7 ", "min_gap_days = 70 ") + """
[[experiments]]
name = "same-offer"
triggers = ["usage_limit", "usage_forecast"]
[[experiments.variants]]
name = "a"
offer = { wording = "a" }
[[experiments.variants]]
name = "b"
offer = { wording = "b" }
"""
    rules = parse_rules(text, "truth.toml")
    lines = b"".join(generate(2500, 120, 11, "2025-01-01", rules, bad_rate=0.0,
                              effect=Effect(TREATED, CONTROL))).splitlines()
    return Tally.of(backtest_lines(lines, rules, 8)).measure


def test_the_true_uplift_lies_inside_the_reported_interval(measured):
    rows = [r for r in measured.rows() if r["trigger"] in PLAN_OFFERS]
    n_t, k_t = sum(r["proposals"] for r in rows), sum(r["converted"] for r in rows)
    n_h, k_h = sum(r["held_out"] for r in rows), sum(r["held_converted"] for r in rows)
    assert n_t > 1500 and n_h > 500
    d, lo, hi = newcombe(k_t, n_t, k_h, n_h)
    assert lo <= TREATED - CONTROL <= hi, (d, lo, hi)
    assert lo > 0                                              # and the effect is found
    total = measured.rows()[-1]                                # every offer: a positive uplift too
    assert total["trigger"] == "total" and total["uplift"][1] > 0


def test_variants_with_the_same_true_rate_are_not_significantly_different(measured):
    a, b = measured.variant_rows()
    assert a["proposals"] > 300 and b["proposals"] > 300
    assert b["significant"] is False, b
    for v in (a, b):
        lo, hi = v["interval"]
        assert lo <= TREATED <= hi, v
