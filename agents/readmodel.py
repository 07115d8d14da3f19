"""The Redis read model: latest proposals and suppressions per customer, and each one's lifecycle.

Redis is a read model, never the source of truth: it can be dropped and
rebuilt by replaying `proposals`, `proposals.suppressed` and `proposal-status` from the start.
Writes are idempotent by proposal_id: the first write of an id claims
`upsell:proposal:<id>` with SET NX and, in the same Lua script run (one per batch
of a kind), indexes it and counts it; a redelivered record changes nothing.

Keys (TTL policy in README.md; TTLs run on the Redis clock from the write, because
event time may be far in the past in a replay):
  upsell:proposal:<id>                  the proposal JSON; 90 days after it was written
  upsell:suppressed:<id>                the suppressed proposal JSON; 90 days after it was written
  upsell:customer:<cid>:proposals       sorted set of ids by created_at; latest 50; 180 days after the last write
  upsell:customer:<cid>:suppressed      sorted set of ids by created_at; latest 50; 180 days after the last write
  upsell:status:<id>                    hash: status -> the proposal-status record JSON; 90 days after the last write
  upsell:stats                          hash: proposals:<trigger>, suppressed:<trigger>:<reason>,
                                        status:<trigger>:<status>

The decisions come from a Kafka consumer of their own (`consumer`: aiokafka on the worker's
event loop, consumer group `<UPSELL_APP_ID>-readmodel`), not from the engine's Faust consumer.
One task (`readmodel`, `feed`) writes what it fetches in batches and commits a batch's offsets
once it is written, so a record is written at least once (a batch written twice changes nothing).
While Redis cannot be reached, a batch is written again after a growing wait (up to 5 s), nothing
is committed meanwhile, and only this consumer waits: the engine goes on reading its inputs and
sending decisions, and the read model catches up once Redis is back.
Any other error ends the task and stops the worker, like an error in the ingest.

Its own group also keeps it off the engine's fetches, which are the worker's latency path.
A group of its own has partitions of its own: a
worker's read model writes the decisions of whichever partitions its group gives it, which need
not be its engine's; Redis is one store, so any worker can write any customer.
"""
from __future__ import annotations

import asyncio
import time
import itertools
import logging
import weakref

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.errors import send_dead_letter
from rules.timeutil import DAY, parse_ts
from schemas.outputs import PROPOSAL_SCHEMA, STATUS_SCHEMA, SUPPRESSED_SCHEMA, check
from schemas.validate import MAX_STRING
from streams import deadletters, metrics
from streams import topics as T
from streams.app import app, settings
from streams.timeslice import TimeSlice
from streams.kafka import bootstrap_of, client_kwargs

log = logging.getLogger(__name__)

KEEP = 50
# Records are written in batches of up to BATCH, at most one batch every BATCH_WITHIN seconds
# (`feed`): one Redis round trip and one script run a batch of a kind, not a round trip a record
# (measured live at 2,800 events/s: the per-record writes took about a tenth of the worker's main
# thread). The read model trails the topics by about BATCH_WITHIN; the proposals topic itself is
# not delayed.
BATCH = 500
BATCH_WITHIN = 0.05
# A decision's created_at is event time, so a replay of history is fine; one before this, or
# further ahead of the wall clock than UPSELL_MAX_AHEAD_MS, is refused.
CREATED_MIN = 946_684_800_000       # 2000-01-01T00:00:00Z
CUSTOMER_TTL_MS = 180 * DAY
PROPOSAL_TTL_MS = 90 * DAY
_client: aioredis.Redis | None = None


def client() -> aioredis.Redis:
    global _client
    if _client is None:
        _client = aioredis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
    return _client


class ReadModelError(ValueError):
    """Why the read model did not store a decision record (the text of the dead letter)."""

    def __init__(self, exc: BaseException):
        error, self.field = deadletters.reason(exc)
        super().__init__(f"read model: {error}")


SCHEMAS = {"proposals": PROPOSAL_SCHEMA, "suppressed": SUPPRESSED_SCHEMA, "status": STATUS_SCHEMA}


def read_decision(raw: bytes | None, kind: str) -> dict:
    """A proposal (kind 'proposals'), suppression ('suppressed') or lifecycle record ('status')
    as the read model needs it; ValueError saying what is wrong otherwise (the topics are ours,
    but anyone can write to them, and one bad record must not cost its batch)."""
    try:
        p = orjson.loads(raw if raw is not None else b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON: {exc}") from None
    if not isinstance(p, dict):
        raise ValueError(f"expected a JSON object, got {type(p).__name__}")
    check(SCHEMAS[kind], p)
    for name in ("proposal_id", "customer_id"):
        if not p[name] or len(p[name]) > MAX_STRING:
            raise ValueError(f"field '{name}': expected 1 to {MAX_STRING} characters")
    if kind == "status":
        return p
    created, until = parse_ts(p["created_at"]), parse_ts(p["valid_until"])
    latest = int(time.time() * 1000) + settings.max_ahead_ms
    if not CREATED_MIN <= created <= latest:
        raise ValueError(f"field 'created_at': {p['created_at'][:40]} is outside 2000-01-01 .. "
                         f"now + UPSELL_MAX_AHEAD_MS")
    if until < created:
        raise ValueError("field 'valid_until': before created_at")
    return p


# A batch of one kind, atomically (one script run): the first write of each proposal_id claims its
# document (SET NX) and adds it to the customer's index and the stats; a record seen before, in this
# batch or an earlier one, changes nothing. KEYS: stats, then each record's document and customer
# index. ARGV: document TTL (ms), KEEP, index TTL (ms), then each record's bytes, proposal_id,
# created_at (ms) and stats field. Returns how many were new.
_RECORD_LUA = """
local n = 0
for i = 0, (#KEYS - 1) / 2 - 1 do
  local doc, index, a = KEYS[2 + 2 * i], KEYS[3 + 2 * i], 4 + 4 * i
  if redis.call('SET', doc, ARGV[a], 'NX', 'PX', ARGV[1]) then
    redis.call('ZADD', index, ARGV[a + 2], ARGV[a + 1])
    redis.call('ZREMRANGEBYRANK', index, 0, -tonumber(ARGV[2]) - 1)
    redis.call('PEXPIRE', index, ARGV[3])
    redis.call('HINCRBY', KEYS[1], ARGV[a + 3], 1)
    n = n + 1
  end
end
return n
"""
# A batch of lifecycle records: the first of each (proposal, status) is kept in the proposal's
# status hash and counted. KEYS: stats, then each record's hash. ARGV: TTL (ms), then each
# record's status, bytes and stats field. Returns how many were new.
_STATUS_LUA = """
local n = 0
for i = 0, #KEYS - 2 do
  local key, a = KEYS[2 + i], 2 + 3 * i
  if redis.call('HSETNX', key, ARGV[a], ARGV[a + 1]) == 1 then
    redis.call('HINCRBY', KEYS[1], ARGV[a + 2], 1)
    n = n + 1
  end
  redis.call('PEXPIRE', key, ARGV[1])
end
return n
"""
_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # client -> {script text: registered}


def _script(r: aioredis.Redis, lua: str):
    got = _scripts.setdefault(r, {})
    if lua not in got:
        got[lua] = r.register_script(lua)
    return got[lua]


async def record(r: aioredis.Redis, items: list[tuple[dict, bytes]], kind: str) -> int:
    """Write a batch of (decision, its bytes) from `read_decision` in one round trip and one
    script run (`_RECORD_LUA`, `_STATUS_LUA`), in the order of the batch. A record seen before, in
    this batch or an earlier one, changes nothing. Returns how many were new."""
    if not items:
        return 0
    if kind == "status":
        keys, args = ["upsell:stats"], [PROPOSAL_TTL_MS]
        for p, raw in items:
            keys.append(f"upsell:status:{p['proposal_id']}")
            args += (p["status"], raw, f"status:{p['trigger']}:{p['status']}")
        return int(await _script(r, _STATUS_LUA)(keys=keys, args=args, client=r))
    script = _script(r, _RECORD_LUA)
    prefix = "proposal" if kind == "proposals" else "suppressed"
    keys, args = ["upsell:stats"], [PROPOSAL_TTL_MS, KEEP, CUSTOMER_TTL_MS]
    for p, raw in items:
        stat = (f"proposals:{p['trigger']}" if kind == "proposals"
                else f"suppressed:{p['trigger']}:{p['suppressed']['reason']}")
        keys += (f"upsell:{prefix}:{p['proposal_id']}", f"upsell:customer:{p['customer_id']}:{kind}")
        args += (raw, p["proposal_id"], parse_ts(p["created_at"]), stat)
    return int(await script(keys=keys, args=args, client=r))


async def readable(messages, kind: str) -> list[tuple[dict, bytes]]:
    """A batch of the topic's records (aiokafka's ConsumerRecord) as `record` takes them; the
    unreadable ones are sent to dead-letters with the reason and their bytes."""
    topic = TOPIC_OF[kind]
    items = []
    turn = TimeSlice()
    for msg in messages:
        try:
            items.append((read_decision(msg.value, kind), msg.value))
        except Exception as exc:      # noqa: BLE001 -- any bytes: a dead letter, the batch goes on
            await send_dead_letter(topic, msg, msg.timestamp, ReadModelError(exc))   # aiokafka's: ms
        await turn.pause()
    return items


_LATEST = ("converted", "declined", "withdrawn", "expired")     # which status a decision shows


async def customer_view(r: aioredis.Redis, cid: str) -> dict:
    """The customer's latest proposals and suppressions, newest first; each proposal, and each
    decision held out, with its `status` now (`open` until a lifecycle record says otherwise:
    `converted` wins over an earlier `expired`) and its `lifecycle` records."""
    out = {}
    for kind, prefix in (("proposals", "proposal"), ("suppressed", "suppressed")):
        ids = await r.zrevrange(f"upsell:customer:{cid}:{kind}", 0, -1)
        docs = await r.mget([f"upsell:{prefix}:{i.decode()}" for i in ids]) if ids else []
        out[kind] = [orjson.loads(d) for d in docs if d is not None]
    followed = out["proposals"] + [s for s in out["suppressed"] if s["suppressed"]["reason"] == "holdout"]
    if followed:
        pipe = r.pipeline(transaction=False)
        for p in followed:
            pipe.hgetall(f"upsell:status:{p['proposal_id']}")
        for p, got in zip(followed, await pipe.execute()):
            records = {k.decode(): orjson.loads(v) for k, v in got.items()}
            p["status"] = next((s for s in _LATEST if s in records), "open")
            p["lifecycle"] = sorted(records.values(), key=lambda x: (x["at"], x["status"] != "expired"))
    return out


# Kind -> its topic's name (unprefixed, as a dead letter names its source), and the topics' names,
# prefixed as the worker's topics are -> kind.
TOPIC_OF = {"proposals": "proposals", "suppressed": "proposals.suppressed", "status": "proposal-status"}
KINDS = {T.P + name: kind for kind, name in TOPIC_OF.items()}
RETRY_S = (0.1, 0.5, 2.0, 5.0)      # waits between attempts while Redis cannot be written


def consumer() -> AIOKafkaConsumer:
    """The read model's consumer: its own group, offsets committed by `feed` once written, from the
    earliest record when the group has none (a new read model is built from the whole topics).
    The session timeout is the engine's (UPSELL_SESSION_TIMEOUT); an empty fetch waits up to
    BATCH_WITHIN (the engine's wait, UPSELL_FETCH_MAX_WAIT_MS, is short for latency's sake)."""
    return AIOKafkaConsumer(
        *KINDS, **client_kwargs(bootstrap_of(settings.broker), settings.kafka),
        group_id=f"{settings.app_id}-readmodel",
        client_id=f"{settings.app_id}-readmodel", enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=round(BATCH_WITHIN * 1000), max_poll_records=BATCH,
        session_timeout_ms=int(settings.session_timeout * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval * 1000))


async def write(messages: list) -> None:
    """A batch of records (aiokafka's): each topic's readable records written (`record`; the
    others are dead letters, sent once). While Redis cannot be reached the batch is written again,
    after a wait that grows to 5 s: the writes are idempotent. Returns once all are written."""
    kinds = {"proposals": [], "suppressed": [], "status": []}
    for msg in messages:
        kinds[KINDS[msg.topic]].append(msg)
    items = [(kind, await readable(batch, kind)) for kind, batch in kinds.items() if batch]
    for attempt in itertools.count():
        try:
            for kind, batch in items:
                if batch:
                    metrics.readmodel_written[kind] += await record(client(), batch, kind)
            return
        except (RedisConnectionError, RedisTimeoutError) as exc:
            wait = RETRY_S[min(attempt, len(RETRY_S) - 1)]
            log.warning("read model: Redis not written (%s); again in %.1f s", exc, wait)
            await asyncio.sleep(wait)      # a backoff, not a synchronisation


async def take(c: AIOKafkaConsumer, most: int = BATCH) -> list:
    """The next batch: what the consumer has fetched, up to `most` records, once there is any;
    each partition's records in offset order."""
    messages: list = []
    while not messages:
        for records in (await c.getmany(timeout_ms=1000, max_records=most)).values():
            messages.extend(records)
    return messages


async def feed(c: AIOKafkaConsumer, most: int = BATCH, within: float = BATCH_WITHIN,
               written: dict | None = None) -> None:
    """Forever: a batch (`take`) written (`write`), then its offsets committed (and recorded in
    `written`: TopicPartition -> the next offset to write, for `ReadModel.lag`); at most one batch
    every `within` seconds, the consumer paused in between (no fetch), so a batch holds what came
    meanwhile. A commit that fails (the group rebalanced meanwhile, the broker could not be
    reached) is logged, not an error: the partition's owner reads those records again from the
    last commit that went through and writes them again, which changes nothing; the next commit
    covers them."""
    loop = asyncio.get_running_loop()
    written = {} if written is None else written
    while True:
        began = loop.time()
        messages = await take(c, most)
        await write(messages)
        offsets = {TopicPartition(m.topic, m.partition): m.offset + 1 for m in messages}
        written.update(offsets)
        try:
            await c.commit(offsets)
        except KafkaError as exc:      # a rebalance meanwhile (CommitFailedError), the broker away
            log.warning("read model: offsets not committed (%s); the records will be written again", exc)
        rest = began + within - loop.time()
        if rest > 0 and len(messages) < most:
            paused = c.assignment()
            c.pause(*paused)
            try:
                await asyncio.sleep(rest)          # a linger: what comes meanwhile is the next batch
            finally:
                c.resume(*(paused & c.assignment()))


class ReadModel:
    """The worker's read model while it runs (`app.readmodel`): its consumer, and per
    topic-partition the next offset to write once a batch is written."""

    def __init__(self, consumer: AIOKafkaConsumer):
        self.consumer = consumer
        self.written: dict = {}

    def lag(self) -> dict[str, int]:
        """Decision records not yet in Redis, by kind, over the partitions the read model has."""
        out: dict[str, int] = {kind: 0 for kind in KINDS.values()}
        c, written = self.consumer, self.written
        for tp in c.assignment():
            end = c.highwater(tp)
            if end is not None and tp in written:
                out[KINDS[tp.topic]] += max(0, end - written[tp])
        return out

    def assigned(self) -> dict[str, list[int]]:
        """The decision partitions the read model has now, by kind."""
        out: dict[str, list[int]] = {kind: [] for kind in KINDS.values()}
        for tp in self.consumer.assignment():
            out[KINDS[tp.topic]].append(tp.partition)
        return {kind: sorted(ps) for kind, ps in out.items()}


def lag() -> dict[str, int]:
    """The worker's read model's `ReadModel.lag` (zeros while it does not run)."""
    rm = app.readmodel
    return rm.lag() if rm is not None else {kind: 0 for kind in KINDS.values()}


def assigned() -> dict[str, list[int]]:
    """The worker's read model's `ReadModel.assigned` (none while it does not run), for /health."""
    rm = app.readmodel
    return rm.assigned() if rm is not None else {kind: [] for kind in KINDS.values()}


@app.task
async def readmodel() -> None:
    """Every worker: the decisions of the partitions its read model's group gives it, into Redis."""
    c = consumer()

    async def run() -> None:
        await c.start()
        app.readmodel = ReadModel(c)
        await feed(c, written=app.readmodel.written)

    work = asyncio.ensure_future(run())
    try:
        # Faust can start app tasks while the worker is already stopping (a stop during start-up),
        # after the app has cancelled its tasks: the app's stop, not a cancel, must end this one,
        # so the consumer is closed before the event loop is
        await app.wait_first(work)
    finally:
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)     # an error is raised by wait_first
        if app.readmodel is not None and app.readmodel.consumer is c:
            app.readmodel = None
        await c.stop()
