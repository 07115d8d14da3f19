"""The relay's pure parts (`bench/relay.py`): what it holds comes out at its due time, in due
order, and `spend` costs CPU time, not wall time."""
from __future__ import annotations

import time

from bench.relay import Held, decision, spend
from rules.timeutil import parse_ts


def test_held_items_come_out_once_due_earliest_first_ties_in_the_order_held():
    held = Held()
    assert held.next_due() is None and held.release(10**15) == []
    for due, item in [(130, "c"), (100, "a"), (120, "b1"), (120, "b2"), (200, "d")]:
        held.hold(due, item)
    assert held.next_due() == 100 and len(held) == 5
    assert held.release(99) == []
    assert held.release(120) == ["a", "b1", "b2"]
    assert held.next_due() == 130 and len(held) == 2
    held.hold(125, "late")                  # due before what is left: it comes first
    assert held.release(199.9) == ["late", "c"]
    assert held.release(200) == ["d"] and held.next_due() is None


def test_a_decision_carries_its_record_time_and_key():
    import orjson
    d = orjson.loads(decision(b"c-7", 1_764_000_000_123))
    assert d["customer_id"] == "c-7" and parse_ts(d["created_at"]) == 1_764_000_000_123
    assert d["trigger"] == "usage_limit"


def test_spend_uses_cpu_time_of_this_thread():
    before = time.thread_time()
    spend(0.02)
    assert time.thread_time() - before >= 0.02
