"""The consumer's contract: every decision the engine makes matches the published schema (checked
with a full JSON Schema validator and with the read model's own check), a consumer's new field is
allowed, each trigger's offer and evidence have their documented shape, and the display names
never change a proposal's identity."""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest

from rules.config import load_rules
from rules.state import offer_key
from schemas.outputs import BY_TRIGGER, PROPOSAL_SCHEMA, STATUS_SCHEMA, SUPPRESSED_SCHEMA, check
from streams.backtest import backtest_lines
from streams.generate import generate

ROOT = Path(__file__).resolve().parent.parent
RULES = load_rules()
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


@pytest.fixture(scope="module")
def decisions():
    lines = b"".join(generate(400, 120, 7, "2025-01-01", RULES)).splitlines()
    lines += (ROOT / "tests" / "scenarios" / "saas_and_shop.jsonl").read_bytes().splitlines()
    result = backtest_lines(lines, RULES, 8)
    return result.proposals, result.suppressed, result.statuses


def test_the_published_schemas_are_valid_json_schema():
    for schema in (PROPOSAL_SCHEMA, SUPPRESSED_SCHEMA, STATUS_SCHEMA):
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_lifecycle_record_matches_its_schema(decisions):
    statuses = decisions[2]
    full = jsonschema.Draft202012Validator(STATUS_SCHEMA, format_checker=FORMATS)
    for r in statuses:
        full.validate(r)
        check(STATUS_SCHEMA, r)
    assert {r["status"] for r in statuses} == {"converted", "declined", "expired", "withdrawn"}
    assert {r["via"] for r in statuses if r["status"] == "converted"} == {"outcome", "observed"}
    bad = {**next(r for r in statuses if r["status"] == "withdrawn")}
    del bad["reason"]
    with pytest.raises(jsonschema.ValidationError):
        full.validate(bad)
    with pytest.raises(ValueError):
        check(STATUS_SCHEMA, bad)


def test_every_decision_matches_the_schema_of_its_trigger(decisions):
    proposals, suppressed, _ = decisions
    full_p = jsonschema.Draft202012Validator(PROPOSAL_SCHEMA, format_checker=FORMATS)
    full_s = jsonschema.Draft202012Validator(SUPPRESSED_SCHEMA, format_checker=FORMATS)
    for p in proposals:
        full_p.validate(p)
        check(PROPOSAL_SCHEMA, p)
    for p in suppressed:
        full_s.validate(p)
        check(SUPPRESSED_SCHEMA, p)
    # the stream exercises every trigger, so every variant of the schema was used
    assert {p["trigger"] for p in proposals + suppressed} == {v["properties"]["trigger"]["const"] for v in BY_TRIGGER}


def test_a_new_field_anywhere_is_allowed(decisions):
    p = copy.deepcopy(decisions[0][0])
    p["channel_hint"] = "email"
    p["offer"]["promo_code"] = "X1"
    p["evidence"]["note"] = "more"
    jsonschema.validate(p, PROPOSAL_SCHEMA)
    check(PROPOSAL_SCHEMA, p)


@pytest.mark.parametrize("change,field", [
    (lambda p: p["offer"].pop("plan", None) or p["offer"].pop("skus", None) or p["offer"].pop("line"), "offer"),
    (lambda p: p["evidence"].clear(), "evidence"),
    (lambda p: p.__setitem__("trigger", "no_such_trigger"), "trigger"),
])
def test_a_decision_of_the_wrong_shape_is_refused(decisions, change, field):
    for p in decisions[0][:50]:
        bad = copy.deepcopy(p)
        change(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, PROPOSAL_SCHEMA)
        with pytest.raises(ValueError):
            check(PROPOSAL_SCHEMA, bad)


def test_offers_carry_display_names_from_the_catalog(decisions):
    proposals, _, _ = decisions
    planned = [p for p in proposals if "plan" in p["offer"]]
    skus = [p for p in proposals if "skus" in p["offer"]]
    assert planned and skus
    for p in planned:
        assert p["offer"]["plan_name"] == RULES.plan_by_name[p["offer"]["plan"]].display_name
    for p in skus:
        assert p["offer"]["sku_names"] == [RULES.products[s]["name"] for s in p["offer"]["skus"]]


def test_display_names_are_not_part_of_an_offers_identity():
    bare = {"plan": "pro", "term": "annual", "discount_pct": 15}
    assert offer_key(bare) == offer_key({**bare, "plan_name": "Pro (renamed)"})
    assert offer_key({"skus": ["a", "b"]}) == offer_key({"skus": ["b", "a"], "sku_names": ["B", "A"]})


def test_a_decision_written_before_display_names_is_still_valid(decisions):
    """The topics hold decisions of earlier releases: the read model rebuilt from them keeps them."""
    for p in decisions[0][:200]:
        old = copy.deepcopy(p)
        for key in ("plan_name", "sku_names", "sku_name"):
            old["offer"].pop(key, None)
        jsonschema.validate(old, PROPOSAL_SCHEMA)
        check(PROPOSAL_SCHEMA, old)
