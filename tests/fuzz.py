"""A seeded generator of records no worker may apply: random bytes, truncated JSON, wrong
types, huge and deep values, hostile keys and timestamps at the edges. Every one of them is a
dead letter, whatever the state of the customer it names."""
from __future__ import annotations

import random

import orjson

from rules.engine import INPUT_TOPICS

TIME_END = 4_102_444_800_000           # 2100-01-01: the first event time refused
WRONG_TYPE = {"customers": {"segment": 5}, "purchases": {"order_id": 5, "items": []},
              "usage": {"metric": 5, "value": 1}, "contracts": {"plan": 5},
              "feedback": {"type": 5}, "proposal-outcomes": {"outcome": 5}}


# huge records are few: each is a few hundred kB on the broker and through the worker
KINDS = ("bytes", "truncated", "wrong_type", "not_object", "huge", "deep", "key", "time")
WEIGHTS = (10, 10, 10, 10, 1, 10, 10, 10)


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def hostile(rng: random.Random, cids: list[str], first_ts: int, last_ts: int):
    """One record: (kind, topic, key, value, ts). Its timestamp lies within the stream unless the
    timestamp is the point."""
    topic = rng.choice(INPUT_TOPICS)
    cid = rng.choice(cids)
    key = cid.encode()
    ts = rng.randrange(first_ts, last_ts + 1)
    kind = rng.choices(KINDS, WEIGHTS)[0]
    field = next(iter(WRONG_TYPE[topic])).encode()     # a field the topic's schema reads
    good = orjson.dumps({"customer_id": cid, "metric": "seats", "value": 3, "segment": "b2b"})
    if kind == "bytes":
        value = b"\xff" + rng.randbytes(rng.randrange(0, 200))
    elif kind == "truncated":
        value = good[:rng.randrange(1, len(good) - 1)]
    elif kind == "wrong_type":
        value = orjson.dumps({"customer_id": cid, **WRONG_TYPE[topic]})
    elif kind == "not_object":
        value = rng.choice([b"null", b"[]", b"42", b'"text"', b"true", b"{}"])
    elif kind == "huge":
        value = b'{"customer_id": "' + key + b'", "' + field + b'": "' + b"q" * rng.randrange(200_000, 450_000) + b'"}'
    elif kind == "deep":
        value = b'{"customer_id": "' + key + b'", "' + field + b'": ' + _deep(rng.randrange(900, 1000)) + b"}"
    elif kind == "key":
        key = rng.choice([None, b"", b"k" * 5000, b"\xff\xfe" + key, b"other-" + key, b"\x00"])
        value = good
    else:       # a valid body at a timestamp outside 1970 .. 2100
        value = good if topic == "usage" else orjson.dumps({"customer_id": cid, **WRONG_TYPE[topic]})
        ts = rng.choice([TIME_END, TIME_END + 1, 253_402_300_800_000])
    return kind, topic, key, value, ts
