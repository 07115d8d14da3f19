"""The benchmark's relay (`bench/relay.py`, `bench/run.py` `relay_latency`) against the real
broker: every `every`-th event comes back as a decision stamped with the event's time, no
sooner than the lateness after it, and the relay's CPU is measured."""
from __future__ import annotations

import types

import pytest

from bench import run as B
from rules.engine import INPUT_TOPICS
from streams.generate import generate
from streams.recorded import load_sorted

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("every", [1, 3])
async def test_relay_holds_each_chosen_event_for_the_lateness_and_decides_on_it(broker, every):
    lines = b"".join(generate(customers=20, days=10, seed=3, start="2025-03-01")).splitlines()
    events, _ = load_sorted(lines)
    events = [e for e in events if e.topic in INPUT_TOPICS]
    a = types.SimpleNamespace(lateness_ms=150, fetch_max_wait_ms=10, latency_seconds=1.0, pace_ms=20, timeout=60)
    res = await B.relay_latency(broker, events, 400, a, every, cpu_us=5, prefix=f"it-relay-{every}.")
    assert res["relay_sent"] >= 300
    assert res["relay_samples"] == res["relay_sent"] // every
    # held until its time plus the lateness, then sent: never sooner, and not much later here
    assert a.lateness_ms <= res["relay_min_ms"] <= res["relay_p50_ms"] < a.lateness_ms + 1000
    assert res["relay_us_per_event"] >= 5       # the CPU it was told to spend, and its own


async def test_noop_app_fed_live_reads_every_event_and_its_cpu_is_measured(broker, redis_server, tmp_path):
    """`noop_live_cores`: bench/noop_app.py on the inbox path, fed at a rate after a first second
    that shows it reads; it raises unless the app reads every event sent."""
    lines = b"".join(generate(customers=20, days=10, seed=3, start="2025-03-01")).splitlines()
    events, _ = load_sorted(lines)
    events = [e for e in events if e.topic in INPUT_TOPICS]
    a = types.SimpleNamespace(fetch_max_wait_ms=10, latency_seconds=3.0, pace_ms=20, timeout=120)
    res = await B.noop_live_cores(broker, redis_server, tmp_path, events, 500, a, prefix="it-noop-live.")
    assert res["noop_inbox_live_rate_eps"] == 500
    assert 800 <= res["noop_inbox_live_sent"] <= 1100      # a second of warm-up, then a second timed
    assert 0 < res["noop_inbox_live_cores"] < 2
