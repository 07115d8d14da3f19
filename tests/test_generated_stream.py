"""Issue acceptance on the full generated stream, through the command line as a user runs it:
`upsell generate --customers 1000 --days 120 --seed 7 --start 2025-01-01 | upsell simulate -`."""
import subprocess
import sys
from collections import defaultdict

import orjson
import pytest

from rules.config import load_rules
from rules.timeutil import DAY, parse_ts

TRIGGERS = {"usage_limit", "usage_forecast", "renewal", "fiscal_year_end", "purchase", "co_purchase",
            "underuse", "season", "volume"}
CLI = [sys.executable, "-m", "streams.cli"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("generated")
    stream = d / "stream.jsonl"
    with open(stream, "wb") as f:
        subprocess.run([*CLI, "generate", "--customers", "1000", "--days", "120", "--seed", "7",
                        "--start", "2025-01-01"], stdout=f, check=True)
    # run 1 reads the file in one process, run 2 a pipe in two (`--jobs 2`)
    one = subprocess.run([*CLI, "simulate", str(stream), "--out", str(d / "one.jsonl")],
                         capture_output=True, check=True, text=True)
    with open(stream, "rb") as f:
        two = subprocess.run([*CLI, "simulate", "-", "--jobs", "2", "--out", str(d / "two.jsonl")], stdin=f,
                             capture_output=True, check=True, text=True)
    return (d / "one.jsonl").read_bytes(), (d / "two.jsonl").read_bytes(), one.stdout, two.stdout


def test_every_trigger_and_kind_occurs_and_runs_are_byte_identical(runs):
    one, two, summary, summary2 = runs
    assert one == two and summary == summary2
    proposals = [orjson.loads(line) for line in one.splitlines()]
    assert {p["trigger"] for p in proposals} == TRIGGERS
    assert {p["kind"] for p in proposals} == {"upsell", "cross_sell", "downsell"}
    for reason in ("quiet_period", "unhappy_customer", "frequency_cap", "min_gap", "cooldown", "outranked"):
        assert reason in summary


def test_no_customer_is_pushed(runs):
    g = load_rules().guardrails
    gap, window, cap = g["min_gap_days"] * DAY, g["cap_window_days"] * DAY, g["cap_count"]
    times = defaultdict(list)
    for line in runs[0].splitlines():
        p = orjson.loads(line)
        times[p["customer_id"]].append(parse_ts(p["created_at"]))
    assert len(times) > 300
    for cid, ts in times.items():
        ts.sort()
        assert all(b - a >= gap for a, b in zip(ts, ts[1:])), f"{cid}: two proposals within 7 days"
        assert all(ts[i + cap] - ts[i] >= window for i in range(len(ts) - cap)), \
            f"{cid}: more than {cap} proposals within 30 days"
