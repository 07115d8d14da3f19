"""The Redis read model: latest proposals and suppressions per customer.

Redis is a read model, never the source of truth: it can be dropped and
rebuilt by replaying `proposals` and `proposals.suppressed` from the start.
Writes are idempotent by proposal_id: the first write of an id claims
`upsell:proposal:<id>` with SET NX and, in the same Lua script, indexes it and
counts it; a redelivered record changes nothing.

Keys (TTL policy in README.md; TTLs run on the Redis clock from the write, because
event time may be far in the past in a replay):
  upsell:proposal:<id>                  the proposal JSON; 90 days after it was written
  upsell:suppressed:<id>                the suppressed proposal JSON; 90 days after it was written
  upsell:customer:<cid>:proposals       sorted set of ids by created_at; latest 50; 180 days after the last write
  upsell:customer:<cid>:suppressed      sorted set of ids by created_at; latest 50; 180 days after the last write
  upsell:stats                          hash: proposals:<trigger>, suppressed:<trigger>:<reason>

The records come through an inbox (`INBOX`, streams/inbox.py), as the input records do, to one
task (`readmodel`) that writes them in batches and acknowledges each batch once it is written.
While Redis cannot be reached, a batch is written again after a growing wait (up to 5 s), so
nothing is acknowledged unwritten; decisions queue meanwhile, and once the inbox is full the
fetcher waits for it, as for any full inbox. Any other error ends the task and stops the worker,
like an error in the ingest.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import weakref

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.engine import dead_letter
from rules.timeutil import DAY, parse_ts
from streams import metrics
from streams import topics as T
from streams.app import app, settings
from streams.inbox import Inbox

log = logging.getLogger(__name__)

KEEP = 50
# Records are written in batches of up to BATCH, or what came within BATCH_WITHIN seconds: one
# Redis round trip a batch instead of two a record (measured live at 2,800 events/s: the
# per-record writes took about a tenth of the worker's main thread). The read model trails the
# topics by about BATCH_WITHIN; the proposals topic itself is not delayed.
BATCH = 500
BATCH_WITHIN = 0.05
CUSTOMER_TTL_MS = 180 * DAY
PROPOSAL_TTL_MS = 90 * DAY
_client: aioredis.Redis | None = None


def client() -> aioredis.Redis:
    global _client
    if _client is None:
        _client = aioredis.from_url(settings.redis_url)
    return _client


def read_decision(raw: bytes | None, kind: str) -> dict:
    """A proposal (kind 'proposals') or suppression (kind 'suppressed') as the read model needs
    it; ValueError saying what is wrong otherwise (the topics are ours, but anyone can write to
    them, and one bad record must not cost its batch)."""
    try:
        p = orjson.loads(raw if raw is not None else b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON: {exc}") from None
    if not isinstance(p, dict):
        raise ValueError(f"expected a JSON object, got {type(p).__name__}")
    for name in ("proposal_id", "customer_id", "trigger", "created_at"):
        if not isinstance(p.get(name), str) or not p[name]:
            raise ValueError(f"field {name!r}: expected a non-empty string, got {p.get(name)!r}")
    parse_ts(p["created_at"])
    if kind != "proposals" and not isinstance((p.get("suppressed") or {}).get("reason"), str):
        raise ValueError("field 'suppressed': expected an object with a string reason")
    return p


# One record, atomically: the first write of a proposal_id claims its document (SET NX) and
# adds it to the customer's index and the stats; a record seen before changes nothing.
# KEYS: document, customer index, stats. ARGV: bytes, document TTL (ms), proposal_id,
# created_at (ms), KEEP, index TTL (ms), stats field.
_RECORD_LUA = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[5]) - 1)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('HINCRBY', KEYS[3], ARGV[7], 1)
return 1
"""
_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # client -> its registered script


async def record(r: aioredis.Redis, items: list[tuple[dict, bytes]], kind: str) -> int:
    """Write a batch of (decision, its bytes) from `read_decision` in one round trip, each record
    atomically (`_RECORD_LUA`), in the order of the batch. A record seen before, in this batch or
    an earlier one, changes nothing. Returns how many were new."""
    script = _scripts.get(r)
    if script is None:
        script = _scripts[r] = r.register_script(_RECORD_LUA)
    prefix = "proposal" if kind == "proposals" else "suppressed"
    async with r.pipeline(transaction=False) as pipe:
        for p, raw in items:
            stat = (f"proposals:{p['trigger']}" if kind == "proposals"
                    else f"suppressed:{p['trigger']}:{p['suppressed']['reason']}")
            await script(keys=[f"upsell:{prefix}:{p['proposal_id']}", f"upsell:customer:{p['customer_id']}:{kind}",
                               "upsell:stats"],
                         args=[raw, PROPOSAL_TTL_MS, p["proposal_id"], parse_ts(p["created_at"]), KEEP,
                               CUSTOMER_TTL_MS, stat], client=pipe)
        written = await pipe.execute()
    return sum(written)


async def readable(messages, kind: str) -> list[tuple[dict, bytes]]:
    """A batch of the topic's records (Faust consumer messages) as `record` takes them; the
    unreadable ones are sent to dead-letters with the reason and their bytes."""
    topic = "proposals" if kind == "proposals" else "proposals.suppressed"
    items = []
    for msg in messages:
        try:
            items.append((read_decision(msg.value, kind), msg.value))
        except ValueError as exc:
            metrics.dead_letters[topic] += 1
            await T.dead_letters.send(key=msg.key, value=dead_letter(topic, msg, f"read model: {exc}", None))
    return items


async def customer_view(r: aioredis.Redis, cid: str) -> dict:
    out = {}
    for kind, prefix in (("proposals", "proposal"), ("suppressed", "suppressed")):
        ids = await r.zrevrange(f"upsell:customer:{cid}:{kind}", 0, -1)
        docs = await r.mget([f"upsell:{prefix}:{i.decode()}" for i in ids]) if ids else []
        out[kind] = [orjson.loads(d) for d in docs if d is not None]
    return out


# The decisions, from Faust's consumer in batches (streams/inbox.py), not through agents: an
# agent's channel is cleared when Faust resumes flow after recovery, after it has sought the
# partitions back to their committed offsets, so decisions fetched in between would not be
# written to Redis until a restart (the fetcher's read offset is past them; bench/README, items
# 36 and 40). The inbox keeps them.
INBOX = Inbox(app, {"proposals": T.proposals, "suppressed": T.suppressed})
RETRY_S = (0.1, 0.5, 2.0, 5.0)      # waits between attempts while Redis cannot be written


async def write(messages: list) -> None:
    """A batch from `INBOX`: each topic's readable records written (`record`; the others are
    dead letters, sent once), then all acknowledged. While Redis cannot be reached the batch is
    written again, after a wait that grows to 5 s: the writes are idempotent, and nothing is
    acknowledged before it is written."""
    kinds = {"proposals": [], "suppressed": []}
    for msg in messages:
        kinds[INBOX.names[msg.topic]].append(msg)
    items = [(kind, await readable(batch, kind)) for kind, batch in kinds.items() if batch]
    for attempt in itertools.count():
        try:
            for kind, batch in items:
                if batch:
                    await record(client(), batch, kind)
            break
        except (RedisConnectionError, RedisTimeoutError) as exc:
            wait = RETRY_S[min(attempt, len(RETRY_S) - 1)]
            log.warning("read model: Redis not written (%s); again in %.1f s", exc, wait)
            await asyncio.sleep(wait)      # a backoff, not a synchronisation
    ack = app.consumer.ack
    for msg in messages:
        ack(msg)


@app.task
async def readmodel() -> None:
    """Every worker: the decisions of its partitions into Redis, a batch of up to BATCH, or what
    came within BATCH_WITHIN seconds, at a time."""
    await INBOX.run_batches(write, BATCH, BATCH_WITHIN)
