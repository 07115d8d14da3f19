"""A recorded stream replayed into the real broker yields exactly the backtest's proposals,
in Kafka and in Redis; bad records go to dead letters; two workers share and hand over."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from rules.config import load_rules
from rules.engine import INPUT_TOPICS
from rules.timeutil import format_ts, parse_ts
from streams.backtest import backtest_lines, end_of_stream, last_event_time
from streams.deadletters import original_bytes
from streams.embedded import EmbeddedRedis, free_port, metric_sum
from streams.generate import generate
from streams.recorded import load_sorted
from streams.kafka import ensure_topics
from streams.partitioning import partition_for
from streams.replay import replay, send_markers
from tests.integration.conftest import PARTITIONS, consume, loads, produce

pytestmark = pytest.mark.integration
SCENARIO = Path(__file__).parent.parent / "scenarios" / "saas_and_shop.jsonl"
SAMPLE = Path(__file__).parents[2] / "streams" / "data" / "sample.jsonl"


def _key(p):
    return p["proposal_id"]


async def _redis_ids(url: str, customers) -> set:
    r = aioredis.from_url(url)
    try:
        ids = set()
        for cid in customers:
            ids.update(i.decode() for i in await r.zrange(f"upsell:customer:{cid}:proposals", 0, -1))
        return ids
    finally:
        await r.aclose()


async def _replay_and_compare(broker, redis_server, start_worker, lines):
    expected = backtest_lines(lines, load_rules(), PARTITIONS)
    worker = start_worker()
    await asyncio.to_thread(worker.wait_healthy)
    await replay(lines, broker.bootstrap, PARTITIONS, prefix=start_worker.prefix, progress=False)
    got = loads(await consume(broker.bootstrap, start_worker.prefix + "proposals", len(expected.proposals)))
    assert sorted(got, key=_key) == sorted(expected.proposals, key=_key)
    sup = loads(await consume(broker.bootstrap, start_worker.prefix + "proposals.suppressed",
                              len(expected.suppressed)))
    assert sorted(sup, key=_key) == sorted(expected.suppressed, key=_key)
    # the lifecycle: the same records, byte for byte
    status = await consume(broker.bootstrap, start_worker.prefix + "proposal-status", len(expected.statuses))
    assert sorted(m.value for m in status) == sorted(expected.status_lines().splitlines())
    return worker, expected, got


async def test_golden_scenario_through_the_live_worker(broker, redis_server, start_worker):
    lines = SCENARIO.read_bytes().splitlines()
    worker, expected, got = await _replay_and_compare(broker, redis_server, start_worker, lines)
    want = SCENARIO.with_name("saas_and_shop.expected.jsonl").read_bytes().splitlines()
    assert sorted(orjson.dumps(p) for p in got) == sorted(want)
    # dead letters: the three bad lines of the scenario, with reason and original bytes
    dls = loads(await consume(broker.bootstrap, start_worker.prefix + "dead-letters", 3))
    assert sorted(d["error"].split(":")[0] for d in dls) == sorted(
        ["field 'value'", "malformed JSON", "field 'severity'"])
    bad = next(d for d in dls if d["error"].startswith("malformed"))
    assert original_bytes(bad) == b'{"customer_id": "shop-1", "order_id": '
    # the read model holds the same proposals, and the HTTP view shows them
    customers = {p["customer_id"] for p in expected.proposals}
    ids = {p["proposal_id"] for p in expected.proposals}
    for _ in range(100):
        if await _redis_ids(redis_server.url, customers) == ids:
            break
        await asyncio.sleep(0.1)    # the read model agent runs behind the proposals topic
    assert await _redis_ids(redis_server.url, customers) == ids
    status, body = await asyncio.to_thread(worker.get, "/customers/acme")
    view = orjson.loads(body)
    assert status == 200 and view["state"]["plan"] == "basic"
    assert {p["proposal_id"] for p in view["proposals"]} == {p["proposal_id"] for p in expected.proposals
                                                              if p["customer_id"] == "acme"}
    assert any(s["suppressed"]["reason"] == "cooldown" for s in view["suppressed"])
    status, metrics = await asyncio.to_thread(worker.get, "/metrics")
    assert b'upsell_dead_letters_total{topic="purchases"} 1' in metrics
    assert b'upsell_proposals_total{trigger="season"} 1' in metrics
    # a proposal's lifecycle: withdrawn on the topic, in the read model's view and in /metrics
    [gone] = [r for r in expected.statuses if r["status"] == "withdrawn"]
    for _ in range(100):
        view = orjson.loads((await asyncio.to_thread(worker.get, f"/customers/{gone['customer_id']}"))[1])
        shown = {p["proposal_id"]: p.get("status") for p in view["proposals"]}
        if shown.get(gone["proposal_id"]) == "withdrawn":
            break
        await asyncio.sleep(0.1)    # the read model runs behind proposal-status
    assert shown[gone["proposal_id"]] == "withdrawn", shown
    status, metrics = await asyncio.to_thread(worker.get, "/metrics")
    assert (f'upsell_proposal_status_total{{group="treated",status="withdrawn",trigger="{gone["trigger"]}"}} 1'
            .encode() in metrics), metrics


async def test_bundled_sample_matches_backtest_with_its_lifecycle(broker, redis_server, start_worker):
    lines = SAMPLE.read_bytes().splitlines()
    worker, expected, got = await _replay_and_compare(broker, redis_server, start_worker, lines)
    assert len(expected.statuses) > 50 and {r["status"] for r in expected.statuses} == {
        "converted", "declined", "expired", "withdrawn"}


async def test_generated_stream_matches_backtest(broker, redis_server, start_worker):
    lines = b"".join(generate(customers=60, days=90, seed=21, start="2025-01-01", bad_rate=0.002)).splitlines()
    worker, expected, got = await _replay_and_compare(broker, redis_server, start_worker, lines)
    assert len(got) > 50 and len({p["trigger"] for p in got}) >= 6


async def test_bad_records_on_every_topic_go_to_dead_letters(broker, redis_server, start_worker):
    worker = start_worker()
    await asyncio.to_thread(worker.wait_healthy)
    prefix = start_worker.prefix
    await ensure_topics(broker.bootstrap, [prefix + t for t in INPUT_TOPICS], PARTITIONS)
    ts = parse_ts("2026-06-01T09:00:00Z")
    records, n_bad = [], 0
    wrong_type = {"customers": {"segment": 5}, "purchases": {"order_id": 5, "items": []},
                  "usage": {"metric": 5, "value": 1}, "contracts": {"plan": 5},
                  "feedback": {"type": 5}, "proposal-outcomes": {"outcome": 5}}
    unknown_enum = {"customers": {"segment": "b2x"}, "purchases": {"order_id": "o", "items": [{"sku": "a", "qty": 0}]},
                    "usage": {"metric": "seats", "value": -1}, "feedback": {"type": "rant"},
                    "contracts": {"plan": "pro", "term": "weekly", "renews_at": "2026-01-01T00:00:00Z"},
                    "proposal-outcomes": {"proposal_id": "p", "trigger": "usage_limit", "offer": {},
                                          "outcome": "maybe"}}
    for i, topic in enumerate(INPUT_TOPICS):
        cid = f"dl-{i}"
        for bad in (b"{not json", orjson.dumps({"customer_id": cid, **wrong_type[topic]}),
                    orjson.dumps({"customer_id": 7}), orjson.dumps({"customer_id": cid, **unknown_enum[topic]})):
            records.append((prefix + topic, cid.encode(), bad, ts + n_bad))
            n_bad += 1
    # valid events around them: a customer reaching 90% of seats must still be proposed to
    records.insert(0, (prefix + "customers", b"ok-1", orjson.dumps(
        {"customer_id": "ok-1", "segment": "b2c", "plan": "basic", "signup_at": "2025-01-01T00:00:00Z"}), ts - 10))
    records.append((prefix + "usage", b"ok-1", orjson.dumps(
        {"customer_id": "ok-1", "metric": "seats", "value": 45}), ts + 100))
    await produce(broker.bootstrap, records)
    # stream time passes the last event on every topic: the valid ones are applied
    await replay([], broker.bootstrap, PARTITIONS, prefix=prefix, progress=False)
    from streams.replay import WATERMARK_HEADER
    from aiokafka import AIOKafkaProducer
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    for t in INPUT_TOPICS:
        for p in range(PARTITIONS):
            await producer.send(prefix + t, value=b"", partition=p, timestamp_ms=ts + 200,
                                headers=[(WATERMARK_HEADER, str(ts + 200).encode())])
    await producer.stop()
    dls = loads(await consume(broker.bootstrap, prefix + "dead-letters", n_bad))
    assert len(dls) == n_bad
    assert {d["topic"] for d in dls} == set(INPUT_TOPICS)
    assert all(d["error"] and original_bytes(d) and d["schema"] == 2 for d in dls)
    assert sum("malformed JSON" in d["error"] for d in dls) == len(INPUT_TOPICS)
    assert sum("expected a non-empty string, got 7" in d["error"] for d in dls) == len(INPUT_TOPICS)
    got = loads(await consume(broker.bootstrap, prefix + "proposals", 1))
    assert got[0]["customer_id"] == "ok-1" and got[0]["trigger"] == "usage_limit"
    assert worker.proc.poll() is None and (await asyncio.to_thread(worker.get, "/health"))[0] == 200


async def test_live_worker_on_the_wall_clock(broker, redis_server, start_worker):
    """UPSELL_CLOCK=wall: events stamped now are decided once the worker's local clock passes them
    (lateness 200 ms), and their state is written at the next batch end (every 0.5 s)."""
    worker = start_worker(UPSELL_CLOCK="wall", UPSELL_LATENESS_MS="200", UPSELL_TICK_INTERVAL="0.05",
                          UPSELL_COMMIT_INTERVAL="0.5")
    await asyncio.to_thread(worker.wait_healthy)
    prefix = start_worker.prefix
    await ensure_topics(broker.bootstrap, [prefix + t for t in INPUT_TOPICS], PARTITIONS)
    # once it owns its partitions, before it has written any state, an unknown customer is a 404
    # (it was a 500); the assignment is another process's progress: polled
    deadline = time.monotonic() + 30
    while len(orjson.loads((await asyncio.to_thread(worker.get, "/health"))[1])["assigned"]) < PARTITIONS:
        assert time.monotonic() < deadline, "no assignment"
        await asyncio.sleep(0.1)
    assert (await asyncio.to_thread(worker.get, "/customers/nobody"))[0] == 404
    now, ids = int(time.time() * 1000), [f"live-{i}" for i in range(6)]
    records = []
    for cid in ids:
        records.append((prefix + "customers", cid.encode(), orjson.dumps(
            {"customer_id": cid, "segment": "b2b", "plan": "basic", "signup_at": "2024-01-01T00:00:00Z"}), now))
        records.append((prefix + "usage", cid.encode(), orjson.dumps(
            {"customer_id": cid, "metric": "seats", "value": 46}), now + 1))
    await produce(broker.bootstrap, records)
    usage_limit = lambda msgs: [p for p in loads(msgs) if p["trigger"] == "usage_limit"]   # noqa: E731
    msgs = await consume(broker.bootstrap, prefix + "proposals", 1,
                         until=lambda msgs: len(usage_limit(msgs)) >= len(ids))
    got = usage_limit(msgs)
    assert sorted(p["customer_id"] for p in got) == ids
    # keyed by customer_id, on the partition Kafka's default partitioner gives the key
    assert all(m.key == orjson.loads(m.value)["customer_id"].encode() for m in msgs)
    assert all(m.partition == partition_for(m.key.decode(), PARTITIONS) for m in msgs)
    assert {p["created_at"] for p in got} == {format_ts(now + 1)}
    # the state reaches the table at a batch end; /customers reads the table (polled: another process)
    deadline, state = time.monotonic() + 30, None
    while state is None and time.monotonic() < deadline:
        status, body = await asyncio.to_thread(worker.get, f"/customers/{ids[-1]}")
        if status == 200:
            state = orjson.loads(body)["state"]
        else:                        # 404 until a batch end writes it
            assert status == 404
            await asyncio.sleep(0.1)
    assert state is not None and state["usage"]["seats"]["value"] == 46
    health = orjson.loads((await asyncio.to_thread(worker.get, "/health"))[1])
    assert all(parse_ts(t) > now for t in health["stream_time"].values())
    assert health["event_loop"] == "uvloop"        # the default (UPSELL_EVENT_LOOP)
    assert health["consumer"] == "loop"            # the default (UPSELL_CONSUMER_THREAD=0)
    metrics = (await asyncio.to_thread(worker.get, "/metrics"))[1].decode()
    moves = [line for line in metrics.splitlines() if line.startswith("upsell_clock_moves_total ")]
    assert len(moves) == 1 and float(moves[0].split()[1]) > 0
    # its decision was timed from its event time: at least the lateness, in the histogram
    assert metric_sum(metrics, "upsell_decision_latency_seconds_count") >= 1
    # what it runs: in /metrics and in its start log (rules, clock, lateness, Redis without a password)
    digest = load_rules().digest
    assert f'rules="default.toml",rules_sha256="{digest}"' in metrics
    log = worker.log.read_text(errors="replace")
    assert f"rules default.toml (sha256 {digest}), clock wall, lateness 200 ms, {PARTITIONS} partitions" in log
    assert f"redis {redis_server.url}" in log
    # what it handed to Kafka (state, decisions) reaches the broker: the gauge comes back to 0
    deadline = time.monotonic() + 30
    while True:
        page = (await asyncio.to_thread(worker.get, "/metrics"))[1].decode()
        unsent = [float(line.split()[1]) for line in page.splitlines() if line.startswith("upsell_unsent_bytes ")]
        assert len(unsent) == 1 and unsent[0] >= 0
        if unsent[0] == 0:
            break
        assert time.monotonic() < deadline, f"{unsent[0]} bytes still unsent"
        await asyncio.sleep(0.1)      # another process's progress: polled


@pytest.mark.parametrize("how", ["killed", "stopped"])
async def test_two_workers_share_partitions_and_take_over(broker, redis_server, start_worker, how):
    lines = b"".join(generate(customers=80, days=90, seed=33, start="2025-01-01")).splitlines()
    expected = backtest_lines(lines, load_rules(), PARTITIONS)
    await replay([], broker.bootstrap, PARTITIONS, prefix=start_worker.prefix, progress=False)  # topics
    # one worker on each event loop, and with its consumer on that loop or in a thread of its
    # own: the group, the rebalances, the tables and the decisions do not depend on either
    w1, w2 = start_worker("w1"), start_worker("w2", UPSELL_EVENT_LOOP="aio", UPSELL_CONSUMER_THREAD="1")
    await asyncio.to_thread(w1.wait_healthy)
    await asyncio.to_thread(w2.wait_healthy)
    h1, h2 = [orjson.loads((await asyncio.to_thread(w.get, "/health"))[1]) for w in (w1, w2)]
    assert (h1["event_loop"], h1["consumer"]) == ("uvloop", "loop")
    assert (h2["event_loop"], h2["consumer"]) == ("aio", "thread")
    # the group settles with partitions on both workers (polling another process's view)
    for _ in range(300):
        a1 = orjson.loads((await asyncio.to_thread(w1.get, "/health"))[1])["assigned"]
        a2 = orjson.loads((await asyncio.to_thread(w2.get, "/health"))[1])["assigned"]
        if a1 and a2 and sorted(a1 + a2) == list(range(PARTITIONS)):
            break
        await asyncio.sleep(0.1)
    assert a1 and a2 and sorted(a1 + a2) == list(range(PARTITIONS)), (a1, a2)
    # the first half of the stream, then w2 is killed (no clean shutdown, no final commit), or
    # stopped (SIGTERM, as a rolling deploy does) while holding events: w1 takes over its
    # partitions, restores their tables from the changelogs and re-reads from the last committed
    # offsets, so some events arrive a second time.
    evs, _ = load_sorted(lines)
    cut = evs[len(evs) // 2].ts
    first = [ln for ln in lines if parse_ts(orjson.loads(ln)["timestamp"]) < cut]
    rest = [ln for ln in lines if parse_ts(orjson.loads(ln)["timestamp"]) >= cut]
    early = [p for p in expected.proposals if parse_ts(p["created_at"]) < cut - 10 ** 7]
    await _publish(broker, start_worker.prefix, first, final=False)
    # watermarks at the cut, as a replay sends them now and then: with the event clock, stream time
    # waits for every topic-partition (and every partition's forward marks) to pass it
    await _end_markers(broker, start_worker.prefix, cut - 2)
    await consume(broker.bootstrap, start_worker.prefix + "proposals", len(early) // 2 or 1)
    if how == "killed":
        w2.stop(kill=True)
        await _publish(broker, start_worker.prefix, rest, final=True)
    else:
        # The second half with no end-of-stream markers: once w2 has read all of its partitions'
        # events, the latest ones wait for stream time (read, not applied, not acknowledged).
        # Stopped then, w2 must commit no event it has not applied and whose state writes and
        # decisions are not in the broker (`ack_when_written`), and wait for what it has sent
        # (`Table.on_stop`): a commit past a held event or a lost write would leave w1 without
        # that event or with a stale customer, and the proposals below would differ.
        await _publish(broker, start_worker.prefix, rest, final=False)
        mine = set(orjson.loads((await asyncio.to_thread(w2.get, "/health"))[1])["assigned"])
        await asyncio.to_thread(w2.wait_events_in, sum(partition_for(e.key, PARTITIONS) in mine for e in evs))
        waiting = metric_sum((await asyncio.to_thread(w2.get, "/metrics"))[1].decode(), "upsell_events_waiting")
        assert waiting > 0
        await asyncio.to_thread(w2.stop)
        assert w2.proc.returncode == 0, w2.tail()
        await _end_markers(broker, start_worker.prefix, last_event_time(evs))
    want = {p["proposal_id"]: p for p in expected.proposals}
    # a redelivered event re-emits the same proposal: wait for the set of ids, then compare content
    by_id = await _each_once(broker, start_worker.prefix + "proposals", "proposal_id", want)
    assert by_id == want, _differences(by_id, want)
    # the lifecycle records too: each once or again the same, none lost with the killed worker
    changes = {r["status_id"]: r for r in expected.statuses}
    assert changes and await _each_once(broker, start_worker.prefix + "proposal-status", "status_id", changes) == changes
    for _ in range(300):     # w1's view of the group can trail its last decisions a little
        health = orjson.loads((await asyncio.to_thread(w1.get, "/health"))[1])
        if health["assigned"] == list(range(PARTITIONS)):
            break
        await asyncio.sleep(0.1)    # another process's group: polled
    assert health["assigned"] == list(range(PARTITIONS))
    assert w1.proc.poll() is None
    # the read models' own group hands w2's decision partitions to w1 too, whose read model
    # writes every proposal to Redis, those w2 had fetched but not committed included
    everything = {kind: list(range(PARTITIONS)) for kind in ("proposals", "suppressed", "status")}
    customers = {p["customer_id"] for p in want.values()}
    for _ in range(300):
        health = orjson.loads((await asyncio.to_thread(w1.get, "/health"))[1])
        if health["readmodel"]["assigned"] == everything and \
                await _redis_ids(redis_server.url, customers) >= set(want):
            break
        await asyncio.sleep(0.1)    # another process's group and writes: polled
    assert health["readmodel"]["assigned"] == everything
    assert await _redis_ids(redis_server.url, customers) >= set(want)


async def _each_once(broker, topic: str, id_field: str, want: dict) -> dict:
    """The records of `topic` by id, read until every id of `want` came: a redelivered record is
    the same again (a repeat that differs fails)."""
    got = await consume(broker.bootstrap, topic, len(want), timeout=120,
                        until=lambda msgs: {orjson.loads(m.value)[id_field] for m in msgs} >= set(want))
    by_id = {}
    for r in loads(got):
        assert by_id.setdefault(r[id_field], r) == r, ("a redelivery changed a record", by_id[r[id_field]], r)
    return by_id


def _differences(got: dict, want: dict) -> str:
    """The proposals that differ, for a failure message that can be acted on."""
    lines = [f"sent, not expected: {got[i]}" for i in sorted(got.keys() - want.keys())]
    lines += [f"expected, not sent: {want[i]}" for i in sorted(want.keys() - got.keys())]
    lines += [f"differs: {got[i]} != {want[i]}" for i in sorted(got.keys() & want.keys()) if got[i] != want[i]]
    return "\n".join(lines)


async def _end_markers(broker, prefix, last_ts):
    """What `replay` sends after a recording's last event: the end-of-stream watermarks."""
    from aiokafka import AIOKafkaProducer
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        await send_markers(producer, prefix, PARTITIONS, end_of_stream(last_ts))
    finally:
        await producer.stop()


async def _publish(broker, prefix, lines, final):
    from aiokafka import AIOKafkaProducer
    evs, _ = load_sorted(lines)
    if final:
        await replay(lines, broker.bootstrap, PARTITIONS, prefix=prefix, progress=False)
        return
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    for e in evs:
        await producer.send(prefix + e.topic, value=e.raw, key=e.key.encode(), timestamp_ms=e.ts)
    await producer.stop()


async def test_worker_on_rocksdb_store_matches_backtest(broker, redis_server, start_worker):
    """The production store (UPSELL_STORE=rocksdb://, the rocksdict driver) gives the same proposals."""
    lines = SCENARIO.read_bytes().splitlines()
    await _replay_and_compare(broker, redis_server, _rocksdb(start_worker), lines)


def _rocksdb(start_worker):
    def start(name="w1", **extra):
        return start_worker(name, UPSELL_STORE="rocksdb://", **extra)
    start.prefix = start_worker.prefix
    return start


async def test_restart_on_rocksdb_store_resumes_from_local_state(broker, redis_server, start_worker):
    """The production store: a worker on RocksDB stops mid-stream; a new process with the same
    data directory resumes from its local tables and the committed offsets, and the whole run
    gives the backtest's proposals."""
    lines = b"".join(generate(customers=40, days=60, seed=21, start="2025-02-01")).splitlines()
    expected = backtest_lines(lines, load_rules(), PARTITIONS)
    evs, _ = load_sorted(lines)
    cut = evs[len(evs) // 2].ts
    first = [ln for ln in lines if parse_ts(orjson.loads(ln)["timestamp"]) < cut]
    rest = [ln for ln in lines if parse_ts(orjson.loads(ln)["timestamp"]) >= cut]
    w1 = start_worker("w1", UPSELL_STORE="rocksdb://")
    await asyncio.to_thread(w1.wait_healthy)
    await _publish(broker, start_worker.prefix, first, final=False)
    await asyncio.to_thread(w1.wait_events_in, len(first))
    data_dir = w1.env["UPSELL_DATA_DIR"]
    w1.stop()
    assert any(Path(data_dir).rglob("CURRENT")), "no RocksDB database in the data directory"
    w2 = start_worker("w1-again", UPSELL_STORE="rocksdb://", UPSELL_DATA_DIR=data_dir)
    await asyncio.to_thread(w2.wait_healthy)
    await _publish(broker, start_worker.prefix, rest, final=True)
    await asyncio.to_thread(w2.wait_events_in, 1)      # fails at once if the worker has stopped
    want = {p["proposal_id"]: p for p in expected.proposals}
    by_id = await _each_once(broker, start_worker.prefix + "proposals", "proposal_id", want)
    assert by_id == want, _differences(by_id, want)


async def test_redis_down_does_not_hold_the_engine_and_the_read_model_catches_up(broker, logs, start_worker):
    """A worker whose Redis is not there yet sends every decision to its topics as usual; its read
    model retries meanwhile, and once a Redis server listens at that address, writes them all."""
    port = free_port()
    lines = SCENARIO.read_bytes().splitlines()
    expected = backtest_lines(lines, load_rules(), PARTITIONS)
    worker = start_worker(UPSELL_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    await asyncio.to_thread(worker.wait_healthy, 60.0, "/live")     # not ready: Redis is down
    await replay(lines, broker.bootstrap, PARTITIONS, prefix=start_worker.prefix, progress=False)
    got = loads(await consume(broker.bootstrap, start_worker.prefix + "proposals", len(expected.proposals)))
    assert sorted(got, key=_key) == sorted(expected.proposals, key=_key)
    for _ in range(300):     # the read model's group joins on its own, a few seconds after the engine's
        if "read model: Redis not written" in worker.tail(200_000):
            break
        worker.alive()
        await asyncio.sleep(0.1)    # another process's log: polled
    assert "read model: Redis not written" in worker.tail(200_000)     # it tried, and goes on
    worker.alive()
    with EmbeddedRedis(port=port, log=logs / f"redis-{port}.log") as redis:
        customers = {p["customer_id"] for p in expected.proposals}
        ids = {p["proposal_id"] for p in expected.proposals}
        for _ in range(150):
            if await _redis_ids(redis.url, customers) == ids:
                break
            await asyncio.sleep(0.1)    # the read model's retry wait (up to 5 s) runs in the worker
        assert await _redis_ids(redis.url, customers) == ids
        status, body = await asyncio.to_thread(worker.get, "/metrics")
        assert f'upsell_readmodel_written_total{{kind="proposals"}} {len(ids)}'.encode() in body
