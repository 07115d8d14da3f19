"""The Redis read model's batched writer, against a real redis-server."""
from __future__ import annotations

import random

import orjson
import pytest
import redis.asyncio as aioredis
from faust.types.tuples import ConsumerMessage

from agents import readmodel
from agents.readmodel import KEEP, read_decision, record
from streams import topics as T
from streams.app import app
from streams.embedded import free_port
from rules.timeutil import DAY, format_ts

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000      # 2026-01-01


def _doc(i: int, cid: str, kind: str) -> bytes:
    p = {"proposal_id": f"{kind}-{i:04d}", "customer_id": cid, "trigger": "usage_limit",
         "created_at": format_ts(T0 + (i * 7919 % 200) * DAY // 10)}
    if kind == "suppressed":
        p["suppressed"] = {"reason": "frequency_cap"}
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


@pytest.mark.parametrize("raw, reason", [
    (b"{oops", "malformed JSON"),
    (b"[1]", "expected a JSON object"),
    (b'{"customer_id": "c0", "trigger": "t", "created_at": "2026-01-01T00:00:00Z"}', "field 'proposal_id'"),
    (b'{"proposal_id": "x", "customer_id": "c0", "trigger": "t", "created_at": "soon"}', "soon"),
    (None, "malformed JSON"),
])
def test_read_decision_says_what_is_wrong(raw, reason):
    with pytest.raises(ValueError, match=reason):
        read_decision(raw, "proposals")


def _messages(values, topic=None) -> list[ConsumerMessage]:
    """Records of `proposals` (or `topic`) as the read model's inbox hands them on."""
    name = (topic or T.proposals).get_topic_name()
    return [ConsumerMessage(name, 1, i, T0 / 1000, 0, None, b"c0", v, None, generation_id=0)
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
            ("proposals", 1, "malformed JSON"), ("proposals", 2, "field 'proposal_id'")]
        assert dead.sent[0]["original"] == "{oops"
        assert all(m.acked for m in msgs)           # the dead letters too: they are dealt with
    finally:
        for m in msgs:
            app.consumer.unacked.discard(m)
        await r.aclose()


async def test_a_batch_is_written_again_while_redis_is_down_and_acknowledged_once_written(redis_server, monkeypatch):
    """`write`, the read model's task's step: a connection error is not the end of the worker nor
    of the batch; it is written again (idempotent) and only then acknowledged. Its dead letters
    are sent once."""
    r = aioredis.from_url(redis_server.url.rsplit("/", 1)[0] + "/4")
    await r.flushdb()
    down = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0")       # nothing listens there
    dead = _DeadLetters()
    msgs = _messages([_doc(1, "c0", "proposals"), b"{oops"]) + _messages([_doc(2, "c0", "suppressed")], T.suppressed)
    calls = []

    def client():
        calls.append(not any(m.acked for m in msgs))
        return down if len(calls) == 1 else r
    monkeypatch.setattr(readmodel, "client", client)
    monkeypatch.setattr(readmodel, "RETRY_S", (0,))
    monkeypatch.setattr(T, "dead_letters", dead)
    try:
        await readmodel.write(msgs)
        assert len(calls) >= 2 and all(calls)        # written again, nothing acknowledged before
        assert all(m.acked for m in msgs)
        assert await r.zrange("upsell:customer:c0:proposals", 0, -1) == [b"proposals-0001"]
        assert await r.zrange("upsell:customer:c0:suppressed", 0, -1) == [b"suppressed-0002"]
        assert [d["offset"] for d in dead.sent] == [1]
    finally:
        for m in msgs:
            app.consumer.unacked.discard(m)
        await r.aclose()
        await down.aclose()
