"""The Redis read model: latest proposals and suppressions per customer.

Redis is a read model, never the source of truth: it can be dropped and
rebuilt by replaying `proposals` and `proposals.suppressed` from the start.
Writes are idempotent by proposal_id: the first write of an id claims
`upsell:proposal:<id>` with SET NX, and a redelivered record changes nothing.

Keys (TTL policy in README.md; TTLs run on the Redis clock from the write, because
event time may be far in the past in a replay):
  upsell:proposal:<id>                  the proposal JSON; 90 days after it was written
  upsell:suppressed:<id>                the suppressed proposal JSON; 90 days after it was written
  upsell:customer:<cid>:proposals       sorted set of ids by created_at; latest 50; 180 days after the last write
  upsell:customer:<cid>:suppressed      sorted set of ids by created_at; latest 50; 180 days after the last write
  upsell:stats                          hash: proposals:<trigger>, suppressed:<trigger>:<reason>
"""
from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from rules.timeutil import DAY, parse_ts
from streams import topics as T
from streams.app import app, settings

KEEP = 50
CUSTOMER_TTL_MS = 180 * DAY
PROPOSAL_TTL_MS = 90 * DAY
_client: aioredis.Redis | None = None


def client() -> aioredis.Redis:
    global _client
    if _client is None:
        _client = aioredis.from_url(settings.redis_url)
    return _client


async def record(r: aioredis.Redis, raw: bytes, kind: str) -> bool:
    """Write one proposal (kind 'proposals') or suppression (kind 'suppressed'); False if seen before."""
    p = orjson.loads(raw)
    pid, cid = p["proposal_id"], p["customer_id"]
    created = parse_ts(p["created_at"])
    prefix = "proposal" if kind == "proposals" else "suppressed"
    if not await r.set(f"upsell:{prefix}:{pid}", raw, nx=True, px=PROPOSAL_TTL_MS):
        return False
    index = f"upsell:customer:{cid}:{kind}"
    stat = (f"proposals:{p['trigger']}" if kind == "proposals"
            else f"suppressed:{p['trigger']}:{p['suppressed']['reason']}")
    async with r.pipeline(transaction=True) as pipe:
        pipe.zadd(index, {pid: created})
        pipe.zremrangebyrank(index, 0, -KEEP - 1)
        pipe.pexpire(index, CUSTOMER_TTL_MS)
        pipe.hincrby("upsell:stats", stat, 1)
        await pipe.execute()
    return True


async def customer_view(r: aioredis.Redis, cid: str) -> dict:
    out = {}
    for kind, prefix in (("proposals", "proposal"), ("suppressed", "suppressed")):
        ids = await r.zrevrange(f"upsell:customer:{cid}:{kind}", 0, -1)
        docs = await r.mget([f"upsell:{prefix}:{i.decode()}" for i in ids]) if ids else []
        out[kind] = [orjson.loads(d) for d in docs if d is not None]
    return out


@app.agent(T.proposals, name="readmodel-proposals")
async def readmodel_proposals(stream):
    async for raw in stream:
        await record(client(), raw, "proposals")


@app.agent(T.suppressed, name="readmodel-suppressed")
async def readmodel_suppressed(stream):
    async for raw in stream:
        await record(client(), raw, "suppressed")
