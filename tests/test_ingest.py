"""The worker's ingest driven record by record (tests/ingest_driver.py): what it sends, writes and
acknowledges, and what a crash at any point leaves its successor."""
from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest

import agents.ingest as A
from rules.config import load_rules
from rules.engine import INPUT_TOPICS
from rules.timeutil import parse_ts
from streams import metrics
from streams.app import settings
from streams.backtest import backtest_lines, end_of_stream, last_event_time
from streams.clock import LocalClock, ManualClock
from streams.generate import generate
from streams.partitioning import partition_for
from streams.recorded import load_sorted
from tests.ingest_driver import IngestDriver
from tests.test_agents import MIN, T0, _seat_customer

SEATS_46 = {"customer_id": "c-1", "metric": "seats", "value": 46}


@pytest.fixture
async def driver(monkeypatch):
    driver = IngestDriver(monkeypatch)
    yield driver
    driver.close()


async def test_records_in_then_decisions_writes_and_acknowledgements_out(driver):
    p = partition_for("c-1", settings.partitions)
    m1 = await driver.pipe("customers", _seat_customer(), T0)
    m2 = await driver.pipe("usage", SEATS_46, T0 + MIN)
    assert driver.read() == [] and not driver.acked            # waiting for stream time
    assert driver.ingest.partitions.runtimes[p].held.keys() == {("customers", 0), ("usage", 0)}
    await driver.tick(p, T0 + 2 * MIN)                          # stream time passes both; batch end
    assert [g["trigger"] for g in driver.read()] == ["usage_limit"]
    assert driver.stored("c-1")["usage"]["seats"]["value"] == 46
    assert {(m.topic, m.partition, m.offset) for m in (m1, m2)} <= driver.acked
    assert driver.ingest.partitions.runtimes[p].held == {}


async def test_the_batch_end_timer_visits_the_partitions_in_turn_and_ends_its_own(driver):
    """Live, each worker ends its partitions' batches on a local timer, one partition per step;
    a partition without a record yet gets a runtime and stream time too (its timers fire)."""
    p = partition_for("c-1", settings.partitions)
    m1 = await driver.pipe("customers", _seat_customer(), T0)
    m2 = await driver.pipe("usage", SEATS_46, T0 + MIN)
    now = T0 + 2 * MIN + settings.lateness_ms
    others = set(range(settings.partitions)) - {p}
    for _ in range(settings.partitions):                        # a round: each partition once
        await driver.ingest.end_next_batch(others, now)
    assert driver.read() == [] and not driver.acked              # p is another worker's here
    runtimes = driver.ingest.partitions.runtimes
    assert set(runtimes) == set(range(settings.partitions))
    assert {runtimes[q].engine.watermark for q in others} == {now - settings.lateness_ms}
    for _ in range(settings.partitions):
        await driver.ingest.end_next_batch({p}, now)
    assert [g["trigger"] for g in driver.read()] == ["usage_limit"]
    assert driver.stored("c-1")["usage"]["seats"]["value"] == 46
    assert {(m.topic, m.partition, m.offset) for m in (m1, m2)} <= driver.acked


async def test_decision_latency_is_observed_on_the_ingests_own_clock(driver, monkeypatch):
    """Live (an ingest with a clock), each decision's latency is its clock's time at the send less
    the decision's created_at; with the event clock (no clock) none is observed."""
    seen = []
    monkeypatch.setattr(metrics, "observe_latency", lambda trigger, ms: seen.append((trigger, ms)))
    await driver.pipe("customers", _seat_customer(), T0)
    await driver.pipe("usage", SEATS_46, T0 + MIN)
    await driver.advance_wall_clock(T0 + 2 * MIN + settings.lateness_ms)
    assert len(driver.read()) == 1 and seen == []
    driver.ingest.clock = LocalClock(ManualClock(T0 + 3 * MIN + 250), settings.lateness_ms, 1000, 1)
    await driver.pipe("customers", _seat_customer("c-2"), T0 + 2 * MIN)
    await driver.pipe("usage", {**SEATS_46, "customer_id": "c-2"}, T0 + 2 * MIN + 1)
    await driver.advance_wall_clock(T0 + 3 * MIN)
    [decision] = driver.read() + driver.read("suppressed")     # sent, or held out
    assert seen == [("usage_limit", T0 + 3 * MIN + 250 - parse_ts(decision["created_at"]))]


async def test_a_clock_move_lets_the_loop_run_between_partitions_and_skips_a_revoked_one(driver, monkeypatch):
    """Live, a move that releases events on several partitions yields to the event loop after
    each partition that sent decisions; a partition revoked meanwhile is not moved."""
    other = next(f"c-{i}" for i in range(2, 200)
                 if partition_for(f"c-{i}", settings.partitions) != partition_for("c-1", settings.partitions))
    for cid in ("c-1", other):
        await driver.pipe("customers", _seat_customer(cid), T0)
        await driver.pipe("usage", {**SEATS_46, "customer_id": cid}, T0 + MIN)
    order = []

    async def emit(rt, out):        # records the sends; yields nothing itself
        order.append((rt.partition, [p["trigger"] for _, p in out]))
    monkeypatch.setattr(A, "emit", emit)
    [first, second] = list(driver.ingest.partitions.runtimes)

    async def revoke():
        order.append("loop")
        driver.ingest.partitions.revoke([SimpleNamespace(partition=second)])
    await asyncio.gather(driver.ingest.advance(T0 + 2 * MIN + settings.lateness_ms), revoke())
    assert order == [(first, ["usage_limit"]), "loop"]
    assert list(driver.ingest.partitions.runtimes) == [first]


async def test_decided_but_not_written_when_the_worker_dies_is_decided_again(driver):
    p = partition_for("c-1", settings.partitions)
    await driver.pipe("customers", _seat_customer(), T0)
    await driver.pipe("usage", SEATS_46, T0 + MIN)
    await driver.advance_wall_clock(T0 + 2 * MIN + settings.lateness_ms)    # decided, not written
    first = driver.read()
    assert len(first) == 1 and driver.stored("c-1") is None and not driver.acked
    driver.crash()
    assert await driver.redeliver() == 2                       # nothing was acknowledged
    await driver.tick(p, T0 + 2 * MIN)
    assert driver.read() == first                              # at least once: the same id and content
    assert driver.stored("c-1")["usage"]["seats"]["value"] == 46 and not driver.unacknowledged()


async def test_written_and_acknowledged_records_are_not_applied_twice(driver):
    p = partition_for("c-1", settings.partitions)
    await driver.pipe("customers", _seat_customer(), T0)
    await driver.pipe("usage", SEATS_46, T0 + MIN)
    await driver.tick(p, T0 + 2 * MIN)
    assert len(driver.read()) == 1
    later = await driver.pipe("usage", {**SEATS_46, "value": 20}, T0 + 3 * MIN)
    driver.crash()
    assert [m.offset for m in driver.unacknowledged()] == [later.offset]
    assert await driver.redeliver() == 1
    await driver.tick(p, T0 + 4 * MIN)
    assert driver.read() == [] and driver.stored("c-1")["usage"]["seats"]["value"] == 20


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_crashes_at_random_points_give_the_backtests_proposals(driver, seed):
    lines = b"".join(generate(customers=30, days=40, seed=seed, start="2025-01-01", bad_rate=0.01)).splitlines()
    expected = backtest_lines(lines, load_rules(), settings.partitions)
    events, _ = load_sorted(lines)
    rng, crashes = random.Random(seed), 0
    for i, e in enumerate(ev for ev in events if ev.topic in INPUT_TOPICS):
        await driver.pipe(e.topic, e.raw, e.ts, key=e.key)
        if i % 40 == 39:                                        # batch ends: stream time so far
            for p in range(settings.partitions):
                await driver.tick(p, e.ts)
        if rng.random() < 0.03:
            driver.crash()
            await driver.redeliver()
            crashes += 1
    for p in range(settings.partitions):
        await driver.tick(p, end_of_stream(last_event_time(events)))
    got = {}
    for proposal in driver.read():
        assert got.setdefault(proposal["proposal_id"], proposal) == proposal     # a repeat is the same
    assert crashes > 3 and got == {p["proposal_id"]: p for p in expected.proposals}
    changes = {}
    for r in driver.read("status"):                 # the lifecycle: the same, once per status_id
        assert changes.setdefault(r["status_id"], r) == r
    assert expected.statuses and changes == {r["status_id"]: r for r in expected.statuses}
    assert not driver.unacknowledged()


async def test_a_customer_document_of_an_earlier_release_is_read_and_upgraded(driver):
    """Version 0 (no "v"; the oldest without applied offsets) is read, upgraded, written as the
    current version (2: with the lifecycle's `track`)."""
    import orjson

    from rules.state import DOCUMENT_VERSION, new_customer
    from streams import topics as T
    p = partition_for("c-1", settings.partitions)
    old = new_customer("c-1")
    del old["v"], old["off"]
    old.update(segment="b2b", plan="basic", signup_at=T0 - 400 * 86_400_000)
    T.customer_state.data[b"c-1"] = orjson.dumps(old)       # as the changelog restores it
    T.customer_state.partition_of[b"c-1"] = p
    await driver.pipe("usage", SEATS_46, T0 + MIN)
    await driver.tick(p, T0 + 2 * MIN)
    assert [g["trigger"] for g in driver.read()] == ["usage_limit"]      # the plan was read
    stored = driver.stored("c-1")
    assert stored["v"] == DOCUMENT_VERSION == 2 and stored["off"] == {"usage": 0}
    assert [e["trigger"] for e in stored["track"]] == ["usage_limit"]
