"""The Redis read model's batched writer, against a real redis-server."""
from __future__ import annotations

import random

import orjson
import pytest
import redis.asyncio as aioredis

from agents.readmodel import KEEP, record
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
                new_batched += await record(batched, raws[i:i + n] + raws[i:i + 1], kind)   # a duplicate in the batch
                i += n
            for raw in raws:
                new_single += await record(single, [raw], kind)
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
