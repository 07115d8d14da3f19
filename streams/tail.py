"""`upsell tail`: follow the proposals topic (or proposals.suppressed, or proposal-status),
readable or as JSON Lines."""
from __future__ import annotations

import sys
import textwrap

import orjson
from aiokafka import AIOKafkaConsumer

from rules.state import DISPLAY_KEYS, DISPLAY_NAMES
from streams.kafka import client_kwargs

WIDTH = 100     # a line of the readable form, at most


def offer_text(offer: dict) -> str:
    """The offer for a person: each part by its display name where the offer has one."""
    parts = []
    for k, v in offer.items():
        if k in DISPLAY_KEYS:
            continue
        v = offer.get(DISPLAY_NAMES.get(k), v)
        parts.append(f"{k}={', '.join(map(str, v)) if isinstance(v, list) else v}")
    return "; ".join(parts)


def pretty(p: dict, suppressed: bool = False, partition: int | None = None) -> str:
    """Two lines of at most WIDTH characters: when, who, what and the id; then why, shortened."""
    where = f"p{partition:<2} " if partition is not None else ""
    head = (f"{where}{p['created_at'][:16].replace('T', ' ')}  {p['customer_id']:<10} {p['kind']:<10} "
            f"{p['trigger']:<15} {p['proposal_id'][:12]}")
    offer = offer_text(p["offer"])
    head = head + "  " + textwrap.shorten(offer, max(10, WIDTH - len(head) - 2), placeholder="...")
    why = p["reason"] if not suppressed else f"suppressed ({p['suppressed']['reason']}): {p['reason']}"
    return head + "\n" + textwrap.shorten(why, WIDTH - 4, placeholder="...", initial_indent="    ")


def pretty_status(r: dict, partition: int | None = None) -> str:
    """One line: when, who, the decision's id, what became of it and why or how much."""
    where = f"p{partition:<2} " if partition is not None else ""
    head = (f"{where}{r['at'][:16].replace('T', ' ')}  {r['customer_id']:<10} {r['trigger']:<15} "
            f"{r['proposal_id'][:12]}  {r['status']}{' (held out)' if r['holdout'] else ''}")
    if r["status"] == "converted":
        money = ", ".join(f"{k} {v:,.0f}" for k, v in r["revenue"].items())
        head += f" via {r['via']}: {money}"
    elif r["status"] == "withdrawn":
        head += f": {r['reason']}, {r['detail']}"
    return textwrap.shorten(head, WIDTH, placeholder="...")


async def tail(bootstrap: str, topic: str, from_beginning: bool = False, limit: int | None = None,
               out=sys.stdout, security=None, as_json: bool = False) -> None:
    """Print each decision of `topic` as it comes (from its start with `from_beginning`): the
    readable form, or with `as_json` the record's value as it is, one per line. A record that is
    not a decision is counted in `limit` and named on stderr."""
    consumer = AIOKafkaConsumer(topic, **client_kwargs(bootstrap, security),
                                auto_offset_reset="earliest" if from_beginning else "latest",
                                enable_auto_commit=False)
    suppressed, lifecycle = topic.endswith("suppressed"), topic.endswith("proposal-status")
    try:
        await consumer.start()
        seen = 0
        async for msg in consumer:
            try:
                p = orjson.loads(msg.value)
                out.write((msg.value.decode() if as_json else pretty_status(p) if lifecycle
                           else pretty(p, suppressed)) + "\n")
            except (ValueError, KeyError, TypeError, AttributeError):   # orjson's and decode errors are ValueErrors
                # anything else on the topic: said on stderr, so --json's output stays JSON Lines
                print(f"upsell tail: not a decision at offset {msg.offset} of partition {msg.partition}",
                      file=sys.stderr)
            out.flush()
            seen += 1
            if limit is not None and seen >= limit:
                return
    finally:
        await consumer.stop()
