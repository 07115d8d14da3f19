"""`upsell tail`: follow the proposals topic, pretty-printed."""
from __future__ import annotations

import sys

import orjson
from aiokafka import AIOKafkaConsumer

from streams.kafka import client_kwargs

KIND = {"upsell": "UPSELL   ", "cross_sell": "CROSS    ", "downsell": "DOWNSELL "}


def pretty(p: dict, suppressed: bool = False) -> str:
    offer = ", ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in p["offer"].items())
    line = (f"{p['created_at'][:16].replace('T', ' ')}  {p['customer_id']:<9} {KIND.get(p['kind'], p['kind'])}"
            f"{p['trigger']:<16} -> {offer:<36} {p['reason']}")
    if suppressed:
        line = f"  (suppressed: {p['suppressed']['reason']}) " + line
    return line


async def tail(bootstrap: str, topic: str, from_beginning: bool = False, limit: int | None = None,
               out=sys.stdout, security=None) -> None:
    consumer = AIOKafkaConsumer(topic, **client_kwargs(bootstrap, security),
                                auto_offset_reset="earliest" if from_beginning else "latest",
                                enable_auto_commit=False)
    await consumer.start()
    seen = 0
    try:
        async for msg in consumer:
            out.write(pretty(orjson.loads(msg.value), topic.endswith("suppressed")) + "\n")
            out.flush()
            seen += 1
            if limit is not None and seen >= limit:
                return
    finally:
        await consumer.stop()
