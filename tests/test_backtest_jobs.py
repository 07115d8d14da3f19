"""`upsell simulate --jobs N`: the partitions in N processes give what one process gives, whatever
the recording's keys look like."""
from __future__ import annotations

import orjson

from rules.config import load_rules
from streams.backtest import backtest_lines
from streams.generate import generate

RULES = load_rules()


def _fields(result):
    return (result.proposal_lines(), result.suppressed, result.status_lines(),
            [(d.line, d.topic, d.key, d.error) for d in result.dead_letters],
            [(b.line, b.error) for b in result.bad_lines], result.events, result.late_events, result.outcomes)


def test_two_and_three_processes_give_the_bytes_of_one():
    lines = b"".join(generate(customers=80, days=40, seed=5, start="2025-01-01", bad_rate=0.01)).splitlines()
    # keys the fast reader does not take: escaped, a number, after the value, none; a bad line;
    # an event dated 2099 before a later one of its topic-partition (dropped as far ahead)
    usage = {"customer_id": "c-00001", "metric": "seats", "value": 3}
    lines += [b'{"topic": "usage", "key": "c-\\u0030\\u00301", "timestamp": "2025-01-20T00:00:00Z", "value": %s}'
              % orjson.dumps(usage),
              b'{"topic": "usage", "value": {"customer_id": "7", "metric": "seats", "value": 1}, "key": 7, '
              b'"timestamp": "2025-01-21T00:00:00Z"}',
              b'{"topic": "usage", "timestamp": "2025-01-22T00:00:00Z", "value": {"key": "x"}}',
              b"not json",
              orjson.dumps({"topic": "usage", "key": "c-00002", "timestamp": "2099-01-01T00:00:00Z",
                            "value": {"customer_id": "c-00002", "metric": "seats", "value": 1}}),
              orjson.dumps({"topic": "usage", "key": "c-00002", "timestamp": "2025-01-23T00:00:00Z",
                            "value": {"customer_id": "c-00002", "metric": "seats", "value": 2}})]
    one = backtest_lines(lines, RULES, 8)
    assert len(one.proposals) > 50 and one.bad_lines and any("AHEAD" in d.error for d in one.dead_letters)
    assert len(one.statuses) > 50                       # the lifecycle is shared out too
    for jobs in (2, 3):
        assert _fields(backtest_lines(lines, RULES, 8, jobs=jobs)) == _fields(one)
