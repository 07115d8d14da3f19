"""Records that once stopped a worker: huge, deep, invalid in odd ways. Each becomes a bounded dead
letter with a reason, in the worker and in the backtest alike, and the stream goes on."""
from __future__ import annotations

import orjson
import pytest

from rules.config import load_rules
from schemas.validate import MAX_STRING, ValidationError, describe, validate
from streams.backtest import backtest_lines
from streams.deadletters import DEFAULT_MAX_BYTES, dead_letter, original_bytes, reason
from tests.test_agents import T0, _drain, _put, _seat_customer, _tick
from tests.test_agents import wired  # noqa: F401 -- the fixture

DEEP = b"[" * 995 + b"]" * 995


def _deep_usage(cid="c-1") -> bytes:
    return b'{"customer_id": "%s", "metric": "seats", "value": %s}' % (cid.encode(), DEEP)


def test_describe_is_short_for_any_value():
    deep = orjson.loads(DEEP)
    assert describe(deep) == "an array of 1 item(s)"
    assert describe("x" * 10_000).endswith("(10000 characters)") and len(describe("x" * 10_000)) < 60
    assert describe(10**40) == "an integer of more than 18 digits"
    assert describe({"a": 1}) == "an object of 1 key(s)" and describe(None) == "null"


def test_an_invalid_field_is_named_without_repeating_the_value():
    huge = "y" * 300_000
    with pytest.raises(ValidationError) as err:
        validate("usage", {"customer_id": "c-1", "metric": "seats", "value": huge})
    assert err.value.field == "value" and len(str(err.value)) < 120 and "expected a number" in str(err.value)
    with pytest.raises(ValidationError, match="expected an array, got an array|expected a number, got an array"):
        validate("usage", {"customer_id": "c-1", "metric": "seats", "value": orjson.loads(DEEP)})


def test_strings_arrays_and_echoed_offers_are_bounded():
    with pytest.raises(ValidationError, match=f"at most {MAX_STRING} characters"):
        validate("usage", {"customer_id": "c-1", "metric": "m" * (MAX_STRING + 1), "value": 1})
    with pytest.raises(ValidationError, match="expected a scalar or an array of scalars"):
        validate("proposal-outcomes", {"customer_id": "c", "proposal_id": "p", "trigger": "renewal",
                                       "outcome": "declined", "offer": {"plan": orjson.loads(DEEP)}})


def test_a_dead_letter_is_bounded_and_says_what_it_cut():
    raw = b'{"customer_id": "c-1", "x": "' + b"z" * 450_000      # malformed and large
    letter = orjson.loads(dead_letter("usage", 1, 7, T0, b"c-1", raw, "malformed JSON", None))
    assert len(orjson.dumps(letter)) < DEFAULT_MAX_BYTES + 2_000
    assert letter["truncated"] and letter["original_size"] == len(raw) and len(letter["original_sha256"]) == 64
    assert raw.startswith(original_bytes(letter))
    binary = bytes(range(256)) * 4
    small = orjson.loads(dead_letter("usage", 0, 0, None, None, binary, "bad", None))
    assert small["original"] is None and original_bytes(small) == binary and not small["truncated"]
    # control characters take six bytes each in JSON: still within the limit
    ctl = orjson.loads(dead_letter("usage", 0, 0, None, b"k" * 5000, b"\x01" * 100_000, "bad", None))
    assert len(orjson.dumps(ctl)) < DEFAULT_MAX_BYTES + 3_000 and len(ctl["key"]) == 1024


def test_describing_any_error_never_fails():
    assert reason(RecursionError("maximum recursion depth"))[0] == "unreadable record (RecursionError)"
    assert reason(ValidationError("value", "expected a number"))[1] == "value"


async def test_poison_records_do_not_stop_the_worker(wired):
    agents, out = wired
    p = await _put(agents, "customers", _seat_customer(), T0)
    await _put(agents, "usage", _deep_usage(), T0 + 1, key="c-1")
    await _put(agents, "usage", b'{"customer_id": "c-1", "metric": "' + b"q" * 450_000 + b'"', T0 + 2, key="c-1")
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": "9" * 300_000}, T0 + 3)
    await _put(agents, "usage", b"\xff\xfe" * 100, T0 + 4, key="c-1")
    await _put(agents, "usage", b"{}", T0 + 5, key="k" * 5000)
    letters = _drain(out["dead_letters"])
    assert len(letters) == 5
    assert all(len(orjson.dumps(d)) < DEFAULT_MAX_BYTES + 3_000 for d in letters)
    assert [d["field"] for d in letters[:3]] == ["value", None, "value"]
    # the stream goes on: the next valid event is applied and proposed on
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 46}, T0 + 10)
    await _tick(agents, p, T0 + 20)
    assert [g["trigger"] for g in _drain(out["proposals"])] == ["usage_limit"]


def test_the_backtest_makes_the_same_dead_letters_and_proposals():
    def line(topic, key, ts, value):
        return orjson.dumps({"topic": topic, "key": key, "timestamp": ts, "value": value})
    good = [line("customers", "c-1", "2025-06-10T09:00:00Z", _seat_customer()),
            line("usage", "c-1", "2025-06-10T09:01:00Z", {"customer_id": "c-1", "metric": "seats", "value": 46})]
    bad = [line("usage", "c-1", "2025-06-10T09:00:30Z", _deep_usage().decode()),
           line("usage", "c-1", "2025-06-10T09:00:31Z", {"customer_id": "c-1", "metric": "seats",
                                                         "value": "9" * 300_000}),
           # as an object, 997 levels deep: more than orjson writes, less than it reads
           b'{"topic": "usage", "key": "c-1", "timestamp": "2025-06-10T09:00:32Z", "value": '
           + _deep_usage() + b"}"]
    rules = load_rules()
    plain = backtest_lines(good, rules, 4)
    poisoned = backtest_lines(good[:1] + bad + good[1:], rules, 4)
    assert poisoned.proposal_lines() == plain.proposal_lines() and len(plain.proposals) == 1
    assert len(poisoned.dead_letters) == 3 and all(len(d.error) < 200 for d in poisoned.dead_letters)
