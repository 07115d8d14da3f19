"""HTTP views on Faust's web server: /customers/{id}, /health, /metrics."""
from __future__ import annotations

import asyncio

import orjson

from agents.engine import ENGINES, LOCAL
from agents.readmodel import assigned as readmodel_assigned, client, customer_view
from rules.guardrails import unhappy_reason
from rules.timeutil import format_ts
from streams import metrics
from streams import topics as T
from streams.app import app, rules
from streams.settings import event_loop_name
from streams.transport import consumer_runs_on


def _ts(ms):
    return None if ms is None else format_ts(ms)


def summary(c: dict, now: int | None) -> dict:
    """What a person wants to know about a customer's state."""
    return {
        "customer_id": c["id"], "segment": c["segment"], "plan": c["plan"], "term": c["term"],
        "signup_at": _ts(c["signup_at"]), "renews_at": _ts(c["renews_at"]),
        "fiscal_year_end_month": c["fy_month"],
        "usage": {m: {"value": u["value"], "limit": u["limit"]} for m, u in sorted(c["usage"].items())},
        "owned": c["owned"], "open_high_tickets": c["tickets"],
        "unhappy": unhappy_reason(c, now, rules) if now is not None else None,
        "recent_proposals_at": [format_ts(t) for t in c["sent"]],
        "declined_offers": {k: format_ts(t) for k, t in sorted(c["declined"].items())},
        "next_time_check": _ts(c["due"]),
    }


@app.page("/customers/{customer_id}")
async def customer(web, request, customer_id: str):
    # Faust routes a key to its owner with the producer's metadata for the changelog topic, which
    # the producer only fetches when it first writes there: before this worker's first customer
    # write, every request failed with 500. Fetch it first (a no-op once known).
    await app.producer._ensure_producer().partitions_for(T.customer_state.changelog_topic.get_topic_name())
    return await _customer_routed(web, request, customer_id=customer_id)


@app.table_route(table=T.customer_state, match_info="customer_id")
async def _customer_routed(web, request, customer_id: str):
    raw = T.customer_state.get(customer_id.encode())
    if raw is None:
        return web.json({"error": f"unknown customer {customer_id!r}"}, status=404)
    c = orjson.loads(raw)
    eng = next(iter(e for e in ENGINES.values() if c["id"] in e.customers), None)
    now = eng.watermark if eng is not None else None
    view = await customer_view(client(), customer_id)
    return web.json({"state": summary(c, now), "stream_time": _ts(now), **view})


def assigned_partitions() -> list[int]:
    """Input partitions this worker owns now (empty before the first rebalance completes)."""
    try:
        tps = app.consumer.assignment()
    except Exception:      # consumer not started yet
        return []
    names = {T.P + t for t in T.inputs}
    return sorted({tp.partition for tp in tps if tp.topic in names})


@app.page("/health")
async def health(web, request):
    loop = asyncio.get_running_loop()
    return web.json({"status": "ok", "assigned": assigned_partitions(), "partitions": sorted(ENGINES),
                     "stream_time": {p: _ts(e.watermark) for p, e in sorted(ENGINES.items())},
                     "event_loop": event_loop_name(loop), "consumer": consumer_runs_on(app, loop),
                     "readmodel": {"assigned": readmodel_assigned()}})


def _highwater(topic: str, partition: int):
    from faust.types import TP
    try:
        return app.consumer.highwater(TP(T.P + topic, partition))
    except Exception:      # not assigned here (any more)
        return None


@app.page("/metrics")
async def prometheus(web, request):
    moves = LOCAL.moves if LOCAL is not None else None
    waiting = {p: len(e.pending) for p, e in ENGINES.items()}
    return web.text(metrics.render(_highwater, moves, T.WRITES.unsent_bytes, waiting), content_type="text/plain")
