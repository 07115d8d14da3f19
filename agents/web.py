"""HTTP views on Faust's web server: /customers/{id}, /health, /live, /metrics.

With UPSELL_HTTP_TOKEN set, every path but /health and /live asks for `Authorization: Bearer
<token>` (401 without it, 403 with another); the probes carry no customer data. No response names
the server software."""
from __future__ import annotations

import asyncio
import hmac
import logging

import orjson
from aiohttp import web as aioweb

from agents.ingest import owned_partitions   # also declares the ingest (`app.ingest`) these views read
from agents.readmodel import assigned as readmodel_assigned, client, customer_view, lag as readmodel_lag
from rules.guardrails import unhappy_reason
from rules.timeutil import format_ts
from streams import metrics
from streams import topics as T
from streams.app import app, health as HEALTH, rules, settings
from streams.health import PROBE_S
from streams.settings import event_loop_name
from streams.transport import consumer_runs_on

log = logging.getLogger(__name__)
OPEN_PATHS = ("/health", "/live")


@aioweb.middleware
async def bearer_token(request, handler):
    """Every path but the probes asks for the bearer token, when one is set."""
    token = settings.http_token
    if token is not None and request.path.rstrip("/") not in OPEN_PATHS:
        given = request.headers.get("Authorization", "")
        if not given.startswith("Bearer "):
            return aioweb.json_response({"error": "missing bearer token"}, status=401,
                                        headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given[7:].encode(), token.encode()):
            return aioweb.json_response({"error": "wrong bearer token"}, status=403)
    return await handler(request)


async def _no_server_header(request, response) -> None:
    response.headers.pop("Server", None)


app.web.web_app.middlewares.append(bearer_token)
app.web.web_app.on_response_prepare.append(_no_server_header)


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
    eng = next(iter(e for e in app.ingest.partitions.engines().values() if c["id"] in e.customers), None)
    now = eng.watermark if eng is not None else None
    view = await customer_view(client(), customer_id)
    return web.json({"state": summary(c, now), "stream_time": _ts(now), **view})


def topic_names() -> list[str]:
    """Every topic the worker reads or writes, prefixed, and the state changelog."""
    names = [t.get_topic_name() for t in (*T.inputs.values(), T.repartition, T.proposals,
                                          T.suppressed, T.status, T.dead_letters)]
    return names + [T.customer_state.changelog_topic.get_topic_name()]


async def probe_broker() -> None:
    """A metadata request through the worker's producer: the broker answers, and how many
    partitions each of the worker's topics has."""
    try:
        client = app.producer._ensure_producer().client
        md = await asyncio.wait_for(client.fetch_all_metadata(), PROBE_S)
    except Exception as exc:      # noqa: BLE001 -- any failure is what the probe reports
        HEALTH.broker_result(False, f"no metadata ({type(exc).__name__}: {exc})"[:300])
        return
    counts = {}
    for name in topic_names():
        parts = md.partitions_for_topic(name)
        if parts:
            counts[name] = len(parts)
    HEALTH.broker_result(True, f"{len(md.brokers())} broker(s)", counts)
    wrong = HEALTH.wrong_topics()
    if wrong:
        log.error("topics with another partition count than UPSELL_PARTITIONS=%d: %s", settings.partitions,
                  ", ".join(f"{t} has {n}" for t, n in wrong.items()))


async def probe_redis() -> None:
    try:
        await asyncio.wait_for(client().ping(), PROBE_S)
    except Exception as exc:      # noqa: BLE001
        HEALTH.redis_result(False, f"{type(exc).__name__}: {exc}"[:300])
    else:
        HEALTH.redis_result(True, settings.redis_url_redacted)


@app.task
async def watch() -> None:
    """Every worker: probe the broker and Redis now and every PROBE_S seconds (`HEALTH`)."""
    HEALTH.install_filter()
    while True:
        await asyncio.gather(probe_broker(), probe_redis())
        await asyncio.sleep(PROBE_S)      # a probe period, not a wait for an event


def report() -> tuple[bool, dict]:
    loop = asyncio.get_running_loop()
    problems, warnings = HEALTH.problems(bool(app.rebalancing)), HEALTH.warnings()
    body = {"status": "unavailable" if problems else "degraded" if warnings else "ok",
            "problems": problems, "warnings": warnings,
            "broker": HEALTH.broker.as_dict(), "redis": HEALTH.redis.as_dict(),
            "topics": HEALTH.topics, "offset_regressions": HEALTH.regressions,
            "assigned": sorted(owned_partitions()), "partitions": sorted(app.ingest.partitions.runtimes),
            "stream_time": {p: _ts(e.watermark) for p, e in sorted(app.ingest.partitions.engines().items())},
            "event_loop": event_loop_name(loop), "consumer": consumer_runs_on(app, loop),
            "readmodel": {"assigned": readmodel_assigned(), "lag": readmodel_lag()}}
    return not problems, body


@app.page("/health")
async def health(web, request):
    """Readiness: 200 when the worker can do its work, else 503 with the problems."""
    ready, body = report()
    return web.json(body, status=200 if ready else 503)


@app.page("/live")
async def live(web, request):
    """Liveness: the process serves requests."""
    return web.json({"status": "alive"})


def _highwater(topic: str, partition: int):
    from faust.types import TP
    try:
        return app.consumer.highwater(TP(T.P + topic, partition))
    except Exception:      # not assigned here (any more)
        return None


@app.page("/metrics")
async def prometheus(web, request):
    clock, engines = app.ingest.clock, app.ingest.partitions.engines()
    moves = clock.moves if clock is not None else None
    waiting = {p: len(e.pending) for p, e in engines.items()}
    return web.text(metrics.render(_highwater, moves, T.WRITES.unsent_bytes, waiting), content_type="text/plain")
