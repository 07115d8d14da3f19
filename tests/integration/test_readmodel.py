"""The Redis read model: its batched writer against a real redis-server, and its consumer
(`feed`) against the real broker too."""
from __future__ import annotations

import asyncio
import os
import random

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from agents import readmodel
from agents.readmodel import KEEP, read_decision, record
from streams import topics as T
from streams.embedded import free_port
from streams.kafka import ensure_topics
from rules.timeutil import DAY, format_ts
from tests.integration.conftest import produce

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000      # 2026-01-01


def _full(**fields) -> dict:
    """A decision as the published schema has it."""
    p = {"schema": 1, "proposal_id": "x", "customer_id": "c0", "kind": "upsell", "trigger": "usage_limit",
         "offer": {"plan": "pro"}, "audience": "admin", "reason": "r", "priority": 1,
         "evidence": {"metric": "seats", "value": 46, "limit": 50, "level": 0.8},
         "created_at": format_ts(T0), "valid_until": format_ts(T0 + 30 * DAY)}
    p.update(fields)
    return p


def _doc(i: int, cid: str, kind: str) -> bytes:
    created = T0 + (i * 7919 % 200) * DAY // 10
    p = _full(proposal_id=f"{kind}-{i:04d}", customer_id=cid, created_at=format_ts(created),
              valid_until=format_ts(created + 30 * DAY))
    if kind == "suppressed":
        p["suppressed"] = {"reason": "frequency_cap", "detail": "d"}
    return orjson.dumps(p)


async def _dump(r: aioredis.Redis) -> dict:
    out = {}
    for key in sorted(await r.keys("upsell:*")):
        kind = (await r.type(key)).decode()
        if kind == "string":
            out[key] = await r.get(key)
        elif kind == "zset":
            out[key] = await r.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = await r.hgetall(key)
        out[key, "ttl"] = await r.pttl(key) > 0
    return out


async def test_batches_leave_redis_as_one_record_at_a_time_would(redis_server):
    """Same records, same order, redelivered and duplicated: batched writes (db 1) and one write
    per record (db 2) give the same keys, values, indexes (trimmed to KEEP) and stats."""
    rng = random.Random(3)
    stream = [(_doc(i, f"c{i % 3}", kind), kind) for i in range(170) for kind in ("proposals", "suppressed")]
    stream += rng.sample(stream, 40)                     # redelivered records
    base = redis_server.url.rsplit("/", 1)[0]
    batched, single = aioredis.from_url(base + "/1"), aioredis.from_url(base + "/2")
    try:
        await batched.flushdb()
        await single.flushdb()
        new_batched = new_single = 0
        for kind in ("proposals", "suppressed"):
            raws = [raw for raw, k in stream if k == kind]
            i = 0
            while i < len(raws):
                n = rng.randint(1, 60)
                batch = raws[i:i + n] + raws[i:i + 1]              # a duplicate in the batch
                new_batched += await record(batched, [(read_decision(b, kind), b) for b in batch], kind)
                i += n
            for raw in raws:
                new_single += await record(single, [(read_decision(raw, kind), raw)], kind)
        assert new_batched == new_single == 340
        got = await _dump(batched)
        assert got == await _dump(single)
        index = got[b"upsell:customer:c0:proposals"]
        assert len(index) == KEEP                          # 57 proposals for c0: the latest 50 kept
        assert got[b"upsell:stats"] == {b"proposals:usage_limit": b"170",
                                        b"suppressed:usage_limit:frequency_cap": b"170"}
    finally:
        await batched.aclose()
        await single.aclose()


def _status(pid: str, state: str, at: int, **kw) -> bytes:
    r = {"schema": 1, "status_id": f"{pid}-{state}", "proposal_id": pid, "customer_id": "c0",
         "trigger": "usage_limit", "kind": "upsell", "status": state, "at": format_ts(at),
         "created_at": format_ts(T0), "holdout": False, **kw}
    return orjson.dumps(r)


async def test_the_lifecycle_is_kept_once_per_status_and_shown_with_each_proposal(redis_server):
    """proposal-status records: each (proposal, status) kept and counted once however often it
    comes; the customer's view gives each proposal its status now and its records."""
    r = aioredis.from_url(redis_server.url.rsplit("/", 1)[0] + "/6")
    try:
        await r.flushdb()
        for i in range(3):
            raw = orjson.dumps(_full(proposal_id=f"p{i}", created_at=format_ts(T0 + i)))
            await record(r, [(read_decision(raw, "proposals"), raw)], "proposals")
        expired = _status("p0", "expired", T0 + 30 * DAY)
        converted = _status("p0", "converted", T0 + 31 * DAY, via="observed",
                            revenue={"mrr_before": 5000, "mrr_after": 20000, "expansion_mrr": 15000})
        withdrawn = _status("p1", "withdrawn", T0 + DAY, reason="unhappy_customer", detail="ticket t-1")
        batch = [converted, expired, withdrawn, expired]          # out of order, and one twice
        assert await record(r, [(read_decision(b, "status"), b) for b in batch], "status") == 3
        assert await record(r, [(read_decision(withdrawn, "status"), withdrawn)], "status") == 0
        assert await r.hgetall("upsell:stats") == {b"proposals:usage_limit": b"3",
                                                   b"status:usage_limit:converted": b"1",
                                                   b"status:usage_limit:expired": b"1",
                                                   b"status:usage_limit:withdrawn": b"1"}
        assert await r.pttl("upsell:status:p0") > 0
        view = {p["proposal_id"]: p for p in (await readmodel.customer_view(r, "c0"))["proposals"]}
        assert {i: p["status"] for i, p in view.items()} == {"p0": "converted", "p1": "withdrawn", "p2": "open"}
        assert [x["status"] for x in view["p0"]["lifecycle"]] == ["expired", "converted"]
        assert view["p2"]["lifecycle"] == []
        with pytest.raises(ValueError, match="reason"):
            read_decision(_status("p1", "withdrawn", T0), "status")          # a withdrawal says why
    finally:
        await r.aclose()


@pytest.mark.parametrize("raw, reason", [
    (b"{oops", "malformed JSON"),
    (b"[1]", "expected a JSON object"),
    (orjson.dumps({k: v for k, v in _full().items() if k != "proposal_id"}), "field 'proposal_id'"),
    (orjson.dumps(_full(created_at="soon")), "soon"),
    (orjson.dumps(_full(trigger="t")), "field 'trigger'"),
    (orjson.dumps(_full(created_at="2099-01-01T00:00:00Z", valid_until="2099-02-01T00:00:00Z")), "created_at"),
    (None, "malformed JSON"),
])
def test_read_decision_says_what_is_wrong(raw, reason):
    with pytest.raises(ValueError, match=reason):
        read_decision(raw, "proposals")


def _messages(values, topic=None) -> list[ConsumerRecord]:
    """Records of `proposals` (or `topic`) as the read model's consumer returns them."""
    name = (topic or T.proposals).get_topic_name()
    return [ConsumerRecord(name, 1, i, T0, 0, b"c0", v, None, 2, len(v or b""), [])
            for i, v in enumerate(values)]


class _DeadLetters:
    def __init__(self):
        self.sent = []

    async def send(self, key, value):
        self.sent.append(orjson.loads(value))


async def test_unreadable_records_are_dead_letters_and_the_rest_of_their_batch_is_written(redis_server, monkeypatch):
    r = aioredis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3")
    await r.flushdb()
    dead = _DeadLetters()
    monkeypatch.setattr(readmodel, "client", lambda: r)
    monkeypatch.setattr(T, "dead_letters", dead)
    msgs = _messages([_doc(1, "c0", "proposals"), b"{oops", b'{"customer_id": "c0"}', _doc(2, "c0", "proposals")])
    try:
        await readmodel.write(msgs)
        assert set(await r.zrange("upsell:customer:c0:proposals", 0, -1)) == {b"proposals-0001", b"proposals-0002"}
        assert [(d["topic"], d["offset"], d["error"].split(":")[1].strip()) for d in dead.sent] == [
            ("proposals", 1, "malformed JSON"), ("proposals", 2, "field 'schema'")]
        assert dead.sent[0]["original"] == "{oops"
        assert dead.sent[0]["timestamp"] == format_ts(T0)       # the record's (ms), not a thousand times it
    finally:
        await r.aclose()


async def test_a_batch_is_written_again_while_redis_is_down(redis_server, monkeypatch):
    """`write`, the read model's step: a connection error is not the end of the worker nor of the
    batch; it is written again (idempotent) and `write` returns only then. Its dead letters are
    sent once."""
    r = aioredis.from_url(redis_server.url.rsplit("/", 1)[0] + "/4")
    await r.flushdb()
    down = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0")       # nothing listens there
    dead = _DeadLetters()
    msgs = _messages([_doc(1, "c0", "proposals"), b"{oops"]) + _messages([_doc(2, "c0", "suppressed")], T.suppressed)
    calls = []

    def client():
        calls.append(None)
        return down if len(calls) == 1 else r
    monkeypatch.setattr(readmodel, "client", client)
    monkeypatch.setattr(readmodel, "RETRY_S", (0,))
    monkeypatch.setattr(T, "dead_letters", dead)
    try:
        await readmodel.write(msgs)
        assert len(calls) >= 2                       # the first attempt failed: written again
        assert await r.zrange("upsell:customer:c0:proposals", 0, -1) == [b"proposals-0001"]
        assert await r.zrange("upsell:customer:c0:suppressed", 0, -1) == [b"suppressed-0002"]
        assert [d["offset"] for d in dead.sent] == [1]
    finally:
        await r.aclose()
        await down.aclose()


async def test_feed_commits_a_batch_once_it_is_written_then_pauses_the_consumer(broker, redis_server, monkeypatch):
    """Against the broker: the read model's consumer takes what was fetched, `write` writes it (here
    Redis is down for the first attempt), and only then are the offsets committed, one past each
    partition's last record; until the next batch is due the consumer is paused, so it fetches
    nothing meanwhile."""
    prefix = f"it-readmodel-feed-{os.getpid()}."
    kinds = {prefix + "proposals": "proposals", prefix + "proposals.suppressed": "suppressed"}
    await ensure_topics(broker.bootstrap, list(kinds), 2)
    docs = [(prefix + "proposals", _doc(i, f"c{i}", "proposals")) for i in range(5)]
    docs += [(prefix + "proposals.suppressed", _doc(9, "c9", "suppressed")), (prefix + "proposals", b"{oops")]
    await produce(broker.bootstrap, [(topic, b"k%d" % (i % 2), v, T0) for i, (topic, v) in enumerate(docs)])
    r = aioredis.from_url(redis_server.url.rsplit("/", 1)[0] + "/5")
    await r.flushdb()
    down = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    dead, attempts, committed = _DeadLetters(), [], asyncio.Queue()
    monkeypatch.setattr(readmodel, "KINDS", kinds)
    monkeypatch.setattr(readmodel, "RETRY_S", (0,))
    monkeypatch.setattr(T, "dead_letters", dead)
    c = AIOKafkaConsumer(*kinds, bootstrap_servers=broker.bootstrap, group_id=prefix + "readmodel",
                         enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=6000,
                         heartbeat_interval_ms=2000)

    def client():
        attempts.append(committed.qsize())
        return down if len(attempts) == 1 else r
    monkeypatch.setattr(readmodel, "client", client)
    commit = c.commit

    async def commit_and_tell(offsets):
        await commit(offsets)
        await committed.put(offsets)
    monkeypatch.setattr(c, "commit", commit_and_tell)
    await c.start()
    feed = asyncio.ensure_future(readmodel.feed(c, within=0.05))
    try:
        seen: dict = {}
        while sum(seen.values()) < len(docs):
            seen.update(await asyncio.wait_for(committed.get(), 30))
        assert attempts[0] == 0 and len(attempts) >= 2       # written again, and committed after
        assert sorted(await r.keys("upsell:proposal:*")) == [b"upsell:proposal:proposals-%04d" % i for i in range(5)]
        assert await r.exists("upsell:suppressed:suppressed-0009")
        assert [d["original"] for d in dead.sent] == ["{oops"]
        for tp, offset in seen.items():
            assert await c.committed(tp) == offset
        # a long linger: after its batch the consumer stays paused, and a cancelled feed resumes it
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)
        feed = asyncio.ensure_future(readmodel.feed(c, within=60))
        await produce(broker.bootstrap, [(prefix + "proposals", b"k0", _doc(7, "c7", "proposals"), T0)])
        await asyncio.wait_for(committed.get(), 30)
        await asyncio.sleep(0)                                # feed's turn: it pauses after the commit
        assert c.paused() == c.assignment() and c.assignment()
        assert await r.exists("upsell:proposal:proposals-0007")
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)
        assert c.paused() == set()
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)
        await c.stop()
        await r.aclose()
        await down.aclose()
