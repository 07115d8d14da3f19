"""Offer tests (experiments with weighted variants) and the holdout group: assignment fixed by a
hash, balanced, independent of each other; the variant changes the offer and its id; a held-out
customer's decision is recorded as suppressed (holdout), never sent; a bad definition fails at
start with file:line."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest

from rules.config import RulesError, default_rules_text, parse_rules
from rules.experiments import experiment_for, held_out, place, variant_of
from tests.driver import Driver, dt

T0 = dt(2026, 5, 4, 9)
D = timedelta(days=1)
IDS = [f"c-{i:05d}" for i in range(10_000)]

EXPERIMENT = """
[[experiments]]
name = "renewal-discount"
triggers = ["renewal"]
[[experiments.variants]]
name = "15pct"
weight = 1
offer = { discount_pct = 15 }
[[experiments.variants]]
name = "10pct"
weight = 3
offer = { discount_pct = 10 }
reason = "(10% for the first year)"
"""


def rules_with(extra: str = "", holdout: str = "share = 0.0"):
    text = re.sub(r"\[holdout\]\nshare = [0-9.]+", f"[holdout]\n{holdout}", default_rules_text())
    return parse_rules(text + extra, "test.toml")


def test_assignment_is_fixed_and_balanced_by_weight():
    rules = rules_with(EXPERIMENT)
    exp = experiment_for(rules, "renewal")
    first = [variant_of(exp, cid).name for cid in IDS]
    assert first == [variant_of(exp, cid).name for cid in IDS]         # sticky: every worker agrees
    share = first.count("10pct") / len(IDS)
    assert abs(share - 0.75) < 0.02, share                             # weights 1:3, within 2 points
    assert experiment_for(rules, "usage_limit") is None


def test_holdout_is_its_share_and_independent_of_the_variant():
    rules = rules_with(EXPERIMENT, "share = 0.1\nby_trigger = { usage_limit = 0.2 }")
    held = [cid for cid in IDS if held_out(rules, cid, "renewal")]
    assert abs(len(held) / len(IDS) - 0.1) < 0.015
    # the variants split the held-out customers as they split everyone
    exp = experiment_for(rules, "renewal")
    in_held = sum(variant_of(exp, cid).name == "10pct" for cid in held) / len(held)
    assert abs(in_held - 0.75) < 0.05
    # a trigger's own group is drawn apart from the global one: about 0.1 + 0.9 * 0.2 held out of usage_limit
    usage = sum(1 for cid in IDS if held_out(rules, cid, "usage_limit")) / len(IDS)
    assert abs(usage - 0.28) < 0.02
    assert all(0 <= place("x", cid) < 1 for cid in IDS[:100])


def _renewal(rules, cid: str) -> Driver:
    d = Driver(rules).saas(T0, plan="pro", segment="b2c", cid=cid)
    renews = T0 + 100 * D
    d.send("contracts", T0, customer_id=cid, plan="pro", term="monthly",
           renews_at=renews.strftime("%Y-%m-%dT%H:%M:%SZ"))
    d.send("usage", renews - 61 * D, customer_id=cid, metric="seats", value=100)
    return d.settle(renews - 60 * D)


def _customer_in(rules, variant: str) -> str:
    exp = experiment_for(rules, "renewal")
    return next(cid for cid in IDS if variant_of(exp, cid).name == variant)


def test_a_variant_changes_the_offer_its_id_and_its_words():
    rules = rules_with(EXPERIMENT)
    for variant, pct in (("15pct", 15), ("10pct", 10)):
        cid = _customer_in(rules, variant)
        p = _renewal(rules, cid).proposals[0]
        assert p["offer"]["discount_pct"] == pct and (p["experiment"], p["variant"]) == ("renewal-discount", variant)
        assert p["reason"].endswith("(10% for the first year)") is (variant == "10pct")
        plain = _renewal(rules_with(), cid).proposals[0]       # the experiment removed: the default offer
        assert "experiment" not in plain and plain["offer"]["discount_pct"] == 15
        # the variant is part of the offer the id hashes: the same offer, the same id
        assert (p["proposal_id"] == plain["proposal_id"]) is (pct == 15)
        assert _renewal(rules, cid).proposals[0] == p          # and the same again


def test_a_held_out_customer_is_recorded_not_sent():
    rules = rules_with(holdout="share = 0.0\nby_trigger = { renewal = 1.0 }")
    d = _renewal(rules, "c-1")
    assert d.proposals == []
    [s] = [s for s in d.suppressed if s["trigger"] == "renewal"]
    assert s["suppressed"]["reason"] == "holdout" and "renewal holdout group" in s["suppressed"]["detail"]
    sent = _renewal(rules_with(), "c-1").proposals[0]
    assert {k: v for k, v in s.items() if k != "suppressed"} == sent     # what it would have been


@pytest.mark.parametrize("variants, says", [
    ('[[experiments.variants]]\nname = "a"\nweight = 0\n[[experiments.variants]]\nname = "b"\n', "positive weight"),
    ('[[experiments.variants]]\nname = "a"\n[[experiments.variants]]\nname = "a"\n', "duplicate variant 'a'"),
    ('[[experiments.variants]]\nname = "a"\n', "two or more"),
])
def test_a_bad_experiment_fails_with_file_and_line(variants, says):
    text = f'\n[[experiments]]\nname = "e"\ntriggers = ["renewal"]\n{variants}'
    with pytest.raises(RulesError) as err:
        rules_with(text)
    assert says in str(err.value) and str(err.value).startswith("test.toml:")
    assert err.value.line is not None and err.value.line > default_rules_text().count("\n")


def test_an_unknown_trigger_or_share_fails_with_file_and_line():
    with pytest.raises(RulesError, match=r"test.toml:\d+: experiments.0.triggers: unknown trigger 'upsale'"):
        rules_with('\n[[experiments]]\nname = "e"\ntriggers = ["upsale"]\n')
    with pytest.raises(RulesError, match=r"test.toml:\d+: holdout.share: expected a value <= 0.5"):
        rules_with(holdout="share = 0.9")


def test_decisions_under_test_and_held_out_match_the_published_schema():
    import jsonschema

    from schemas.outputs import PROPOSAL_SCHEMA, SUPPRESSED_SCHEMA, check
    from streams.backtest import backtest_lines
    from streams.generate import generate
    rules = rules_with(EXPERIMENT, "share = 0.1")
    lines = b"".join(generate(customers=200, days=90, seed=3, start="2025-01-01", rules=rules)).splitlines()
    result = backtest_lines(lines, rules, 8)
    assert any(p.get("variant") == "10pct" for p in result.proposals)
    assert any(p["suppressed"]["reason"] == "holdout" for p in result.suppressed)
    for schema, decisions in ((PROPOSAL_SCHEMA, result.proposals), (SUPPRESSED_SCHEMA, result.suppressed)):
        full = jsonschema.Draft202012Validator(schema)
        for p in decisions:
            full.validate(p)
            check(schema, p)
    # a held-out customer is never sent anything
    held = {p["customer_id"] for p in result.suppressed if p["suppressed"]["reason"] == "holdout"}
    assert held and not held & {p["customer_id"] for p in result.proposals if held_out(rules, p["customer_id"], p["trigger"])}
    assert all(held_out(rules, cid, "renewal") for cid in held)
