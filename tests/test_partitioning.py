"""Records produced with another partitioner than Kafka's default (murmur2): seen, counted and
never applied on the wrong partition; state in a changelog partition is never dropped on restore."""
from __future__ import annotations

from types import SimpleNamespace

import orjson

import agents.ingest as A
from rules.config import load_rules
from streams import metrics
from streams import topics as T
from streams.app import settings
from streams.backtest import backtest_lines
from streams.partitioning import partition_for
from streams.app import app
from tests.test_agents import MIN, T0, Input, _drain, _put, _seat_customer, _tick
from tests.test_agents import wired  # noqa: F401 -- the fixture


def _elsewhere(cid: str) -> int:
    return (partition_for(cid, settings.partitions) + 1) % settings.partitions


async def test_a_record_on_another_partition_is_a_dead_letter_naming_the_producer_setting(wired, caplog,
                                                                                         monkeypatch):
    agents, out = wired
    monkeypatch.setattr(A, "FORWARD", False)         # UPSELL_WRONG_PARTITION=dead-letter
    before = metrics.wrong_partition["customers"]
    wrong = _elsewhere("c-1")
    await _put(agents, "customers", _seat_customer(), T0, partition=wrong)
    await _put(agents, "customers", _seat_customer("c-2"), T0, partition=_elsewhere("c-2"))
    letters = _drain(out["dead_letters"])
    assert len(letters) == 2 and letters[0]["partition"] == wrong
    assert "hashes to partition %d" % partition_for("c-1", settings.partitions) in letters[0]["error"]
    assert "murmur2_random" in letters[0]["error"]
    assert metrics.wrong_partition["customers"] - before == 2
    warns = [r for r in caplog.records if "partitioner" in r.getMessage()]
    assert len(warns) == 1 and "murmur2_random" in warns[0].getMessage()      # once per topic
    assert wrong not in app.ingest.partitions.runtimes or "c-1" not in app.ingest.partitions.runtimes[wrong].engine.customers
    # on its own partition the same customer is applied as usual
    p = await _put(agents, "customers", _seat_customer(), T0 + 1)
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 46}, T0 + MIN)
    await _tick(agents, p, T0 + 2 * MIN)
    assert [g["trigger"] for g in _drain(out["proposals"])] == ["usage_limit"]


async def test_restore_keeps_every_document_of_the_changelog_partition(wired):
    agents, out = wired
    p = await _put(agents, "customers", _seat_customer(), T0)
    await _tick(agents, p, T0 + MIN)                  # c-1 written to changelog partition p
    # a document written by an earlier version to partition p for a key that hashes elsewhere
    # (its producer used another partitioner), as the changelog restores it
    stray = "crc-4"
    while partition_for(stray, settings.partitions) == p:
        stray += "x"
    doc = orjson.loads(T.customer_state[b"c-1"])
    doc["id"] = stray
    event = SimpleNamespace(key=stray.encode(), value=orjson.dumps(doc),
                            message=SimpleNamespace(key=stray.encode(), value=orjson.dumps(doc), partition=p))
    T.customer_state.apply_changelog_batch([event])
    app.ingest.partitions.clear()                                  # a restart: the engine is rebuilt
    eng = app.ingest.partitions[p].engine
    assert set(eng.customers) == {"c-1", stray}
    assert metrics.misplaced_customers[p] == 1
    assert orjson.loads(T.customer_state[stray.encode()])["plan"] == "basic"


def test_the_backtest_makes_the_same_call_for_a_recording_that_names_partitions():
    def line(topic, key, ts, value, partition=None):
        rec = {"topic": topic, "key": key, "timestamp": ts, "value": value}
        if partition is not None:
            rec["partition"] = partition
        return orjson.dumps(rec)
    n = 4
    right, wrong = partition_for("c-1", n), (partition_for("c-1", n) + 1) % n
    usage = {"customer_id": "c-1", "metric": "seats", "value": 46}
    lines = [line("customers", "c-1", "2025-06-10T09:00:00Z", _seat_customer(), right),
             line("usage", "c-1", "2025-06-10T09:01:00Z", usage, wrong)]
    got = backtest_lines(lines, load_rules(), n, wrong_partition="dead-letter")
    assert got.proposals == [] and "hashes to partition %d" % right in got.dead_letters[0].error
    forwarded = backtest_lines(lines, load_rules(), n)          # the default: repartition
    lines[1] = line("usage", "c-1", "2025-06-10T09:01:00Z", usage, right)
    direct = backtest_lines(lines, load_rules(), n)
    assert [p["trigger"] for p in direct.proposals] == ["usage_limit"]
    assert forwarded.proposal_lines() == direct.proposal_lines() and forwarded.dead_letters == []


async def test_a_record_on_another_partition_is_forwarded_and_applied_where_its_key_hashes(wired, monkeypatch):
    """UPSELL_WRONG_PARTITION=repartition: key, value and timestamp unchanged, to the partition
    the key hashes to, where it is applied in event time with the customer's other events."""
    agents, out = wired
    repartition = Input("repartition")
    channel = app.channel(maxsize=1000)
    monkeypatch.setattr(T, "repartition", channel)
    forwarded = channel.clone(is_iterator=True)
    before = metrics.wrong_partition["usage"]
    p = await _put(agents, "customers", _seat_customer(), T0)
    wrong = _elsewhere("c-1")
    await _put(agents, "usage", {"customer_id": "c-1", "metric": "seats", "value": 46}, T0 + MIN, partition=wrong)
    assert metrics.wrong_partition["usage"] - before == 1 and _drain(out["dead_letters"]) == []
    assert wrong not in app.ingest.partitions.runtimes or "c-1" not in app.ingest.partitions.runtimes[wrong].engine.customers
    sent = [forwarded.queue.get_nowait() for _ in range(forwarded.queue.qsize())]
    assert len(sent) == 1
    m = sent[0].message
    assert (m.key, m.partition, m.timestamp) == (b"c-1", p, (T0 + MIN) / 1000)
    assert dict(m.headers)["upsell-source"] == b"%d:0" % wrong
    await repartition.put(m.value, key=m.key, partition=m.partition, timestamp=m.timestamp, headers=m.headers)
    await repartition.put(m.value, key=m.key, partition=m.partition, timestamp=m.timestamp, headers=m.headers)
    await _tick(agents, p, T0 + 2 * MIN)
    assert [g["trigger"] for g in _drain(out["proposals"])] == ["usage_limit"]      # once: the copy is dropped
    assert app.ingest.partitions.runtimes[p].engine.stats["duplicates"] == 1
