"""Time that cannot be held hostage: an event far ahead of a later record on its
topic-partition is dropped (a dead letter), the same way live and in the backtest."""
from __future__ import annotations

import orjson

from rules.config import load_rules
from rules.engine import PartitionEngine
from rules.timeutil import format_ts, parse_ts
from streams.backtest import ahead_of_later, backtest_lines, far_ahead
from streams.recorded import load_sorted
from schemas.validate import validate
from tests.test_agents import T0, _drain, _put, _seat_customer, _tick
from tests.test_agents import wired  # noqa: F401 -- the fixture

DAY = 86_400_000
FAR = parse_ts("2099-01-01T00:00:00Z")
RULES = load_rules()


def _usage(value, cid="c-1"):
    return {"customer_id": cid, "metric": "seats", "value": value}


def _v(topic, value):
    return validate(topic, value, key=value["customer_id"], plans=RULES.plan_by_name)


def test_an_event_far_ahead_of_the_next_record_is_dropped_and_its_topic_goes_on():
    eng = PartitionEngine(RULES, 0, max_ahead=DAY)
    eng.push("customers", "c-1", T0, _v("customers", _seat_customer()), 0)
    eng.push("usage", "c-1", FAR, _v("usage", _usage(10)), 0)
    assert eng.take_rejected() == [] and eng.hw["usage"] == FAR     # nothing says it is wrong yet
    eng.push("usage", "c-1", T0 + 60_000, _v("usage", _usage(46)), 1)
    assert eng.take_rejected() == [("usage", 0, FAR, T0 + 60_000)]
    assert eng.hw["usage"] == T0 + 60_000 and ("usage", 0) not in eng.pending
    for topic in ("contracts", "feedback", "proposal-outcomes", "purchases"):
        eng.mark(topic, T0 + 120_000)
    out = eng.tick(T0 + 120_000)
    assert [p["trigger"] for _, p in out] == ["usage_limit"]
    assert eng.stats["ahead"] == 1 and eng.stats["events"]["usage"] == 1


def test_ahead_by_less_than_the_limit_waits_and_an_idle_gap_drops_nothing():
    eng = PartitionEngine(RULES, 0, max_ahead=DAY)
    eng.push("usage", "c-1", T0 + DAY - 1, _usage(1), 0)
    eng.push("usage", "c-1", T0, _usage(2), 1)          # one ms short of the limit: both kept
    eng.push("usage", "c-1", T0 + 30 * DAY, _usage(3), 2)   # a month later: a gap, not a wrong clock
    assert eng.take_rejected() == [] and eng.buffered() == 3


def test_far_ahead_follows_line_order_per_topic_partition():
    records = [(1, "usage", 0, FAR), (2, "usage", 1, T0), (3, "usage", 0, T0 + 5), (4, "contracts", 0, T0),
               (5, "usage", 0, FAR + 1), (6, "usage", 0, FAR + 1 - DAY)]
    # line 1 is exposed by line 3 (same topic-partition), not by line 2 (another partition) or 4;
    # line 6 is exactly the limit behind line 5: both kept
    assert far_ahead(records, DAY) == {1: (3, T0 + 5)}


def _line(topic, key, ts, value):
    return orjson.dumps({"topic": topic, "key": key, "timestamp": format_ts(ts), "value": value})


def test_the_backtest_drops_what_the_worker_drops_and_replays_it_in_that_order():
    good = [_line("customers", "c-1", T0, _seat_customer()),
            _line("usage", "c-1", T0 + 60_000, _usage(46))]
    poisoned = good[:1] + [_line("usage", "c-1", FAR, _usage(10))] + good[1:]
    plain, got = backtest_lines(good, RULES, 4), backtest_lines(poisoned, RULES, 4)
    assert got.proposal_lines() == plain.proposal_lines() and len(plain.proposals) == 1
    assert [d.line for d in got.dead_letters] == [2] and "UPSELL_MAX_AHEAD_MS" in got.dead_letters[0].error
    # without the limit it is applied, last: the customer's renewal and seasonal timers fire by 2099
    assert backtest_lines(poisoned, RULES, 4, max_ahead=None).dead_letters == []
    events, _ = load_sorted(poisoned)
    assert ahead_of_later(events, RULES, 4, DAY) == {2: (3, T0 + 60_000)}


async def test_the_worker_dead_letters_a_record_far_ahead_and_its_partition_moves_on(wired):
    agents, out = wired
    p = await _put(agents, "customers", _seat_customer(), T0)
    await _put(agents, "usage", _usage(10), FAR)
    await _put(agents, "usage", _usage(46), T0 + 60_000)
    letters = _drain(out["dead_letters"])
    assert len(letters) == 1 and letters[0]["topic"] == "usage" and "ahead" in letters[0]["error"]
    assert orjson.loads(letters[0]["original"])["value"] == 10
    await _tick(agents, p, T0 + 120_000)
    assert [g["trigger"] for g in _drain(out["proposals"])] == ["usage_limit"]
