"""Production concerns on the real broker: the HTTP token, readiness that tells the truth, and
the Kafka security settings reaching the broker's SASL handshake."""
from __future__ import annotations

import asyncio
import time
import urllib.request
from urllib.error import HTTPError

import orjson
import pytest

from streams.embedded import EmbeddedBroker, free_port
from streams.kafka import ensure_topics
from streams.settings import KafkaSecurity

pytestmark = pytest.mark.integration


def _get(port: int, path: str, token: str | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _wait(predicate, worker, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.alive()
        try:
            got = predicate()
            if got:
                return got
        except OSError:
            pass
        time.sleep(0.2)     # another process's state: polled
    raise AssertionError(f"not within {timeout} s: {worker.tail()}")


async def test_token_and_readiness(start_worker):
    dead_redis = f"redis://:pw@127.0.0.1:{free_port()}/0"
    worker = start_worker(UPSELL_HTTP_TOKEN="s3cret", UPSELL_REDIS_URL=dead_redis)
    port = worker.port
    # the probe paths are open; readiness says Redis is the problem, with the password hidden
    status, headers, body = await asyncio.to_thread(
        _wait, lambda: (r := _get(port, "/health"))[0] == 503 and "redis" in r[2].decode() and r, worker)
    report = orjson.loads(body)
    assert report["status"] == "unavailable" and any(p.startswith("redis:") for p in report["problems"])
    assert b"pw@" not in body and "Server" not in headers
    assert (await asyncio.to_thread(_get, port, "/live"))[0] == 200
    # the broker is there: its check passes and the topics have the configured partition count
    await asyncio.to_thread(_wait, lambda: orjson.loads(_get(port, "/health")[2])["broker"]["ok"], worker)
    assert not any(p.startswith(("broker", "partition")) for p in orjson.loads(_get(port, "/health")[2])["problems"])
    # every other path asks for the token
    assert (await asyncio.to_thread(_get, port, "/metrics"))[0] == 401
    assert (await asyncio.to_thread(_get, port, "/metrics", "wrong"))[0] == 403
    status, headers, body = await asyncio.to_thread(_get, port, "/metrics", "s3cret")
    assert status == 200 and b"upsell_events_in_total" in body and "Server" not in headers
    # Faust's own pages are off
    assert (await asyncio.to_thread(_get, port, "/router/", "s3cret"))[0] == 404


async def test_sasl_settings_reach_the_brokers_scram_exchange(logs):
    """The embedded broker with authentication required: a client configured for SCRAM-SHA-512
    reaches the SCRAM exchange (and is refused: the broker has no users it can create while
    authentication is on); one configured for PLAIN is refused at the mechanism."""
    log = logs / "broker-sasl.log"
    with EmbeddedBroker(log=log, authentication=True) as broker:
        scram = KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-512", "alice", "secret")
        with pytest.raises(Exception):
            await asyncio.wait_for(ensure_topics(broker.bootstrap, ["t"], 1, scram), 30)
        text = log.read_text(errors="replace")
        assert "NoSharedMechanism" not in text
        plain = KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "alice", "secret")
        with pytest.raises(Exception):
            await asyncio.wait_for(ensure_topics(broker.bootstrap, ["t"], 1, plain), 30)
        deadline = time.monotonic() + 10
        while "NoSharedMechanism" not in log.read_text(errors="replace") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)    # the broker's log is written by another process
        assert "NoSharedMechanism" in log.read_text(errors="replace")


async def test_redis_with_a_password(start_worker, broker, logs):
    """Redis with AUTH: the right password in UPSELL_REDIS_URL, decisions reach Redis and readiness
    passes; a wrong one makes the worker unready, with the password hidden."""
    from redis import asyncio as aioredis
    from rules.timeutil import parse_ts
    from streams.embedded import EmbeddedRedis
    from tests.integration.conftest import produce
    from tests.integration.test_end_to_end import _end_markers
    t0 = parse_ts("2025-06-10T09:00:00Z")
    with EmbeddedRedis(log=logs / "redis-auth.log", password="pa55-word") as redis_auth:
        wrong = redis_auth.url.replace("pa55-word", "not-it")
        w_bad = start_worker("bad", UPSELL_REDIS_URL=wrong)
        status, _, body = await asyncio.to_thread(
            _wait, lambda: (r := _get(w_bad.port, "/health"))[0] == 503 and "redis" in r[2].decode() and r, w_bad)
        assert b"not-it" not in body and b"pa55" not in body
        await asyncio.to_thread(w_bad.stop)
        worker = start_worker("good", UPSELL_REDIS_URL=redis_auth.url)
        await asyncio.to_thread(_wait, lambda: _get(worker.port, "/health")[0] == 200, worker)
        prefix = start_worker.prefix
        await produce(broker.bootstrap, [
            (prefix + "customers", b"c-1", orjson.dumps({"customer_id": "c-1", "segment": "b2b", "plan": "basic",
                                                         "signup_at": "2024-01-01T00:00:00Z"}), t0),
            (prefix + "usage", b"c-1", orjson.dumps({"customer_id": "c-1", "metric": "seats", "value": 46}),
             t0 + 60_000)])
        await _end_markers(broker, prefix, t0 + 60_000)
        r = aioredis.from_url(redis_auth.url)
        try:
            async def stored():
                while not await r.zrange("upsell:customer:c-1:proposals", 0, -1):
                    await asyncio.sleep(0.2)     # another process's writes: polled
            await asyncio.wait_for(stored(), 90)
        finally:
            await r.aclose()



async def test_a_worker_creates_the_missing_topics_with_its_partition_count(start_worker, broker):
    """No topic exists yet: the worker creates every one with UPSELL_PARTITIONS (3, not the
    broker's default), and a record forwarded through `repartition` finds its partition."""
    from streams.kafka import partition_counts
    from streams.replay import TOPICS
    worker = start_worker(UPSELL_PARTITIONS="3")
    await asyncio.to_thread(_wait, lambda: _get(worker.port, "/health")[0] == 200, worker)
    names = [start_worker.prefix + t for t in TOPICS]
    counts = await partition_counts(broker.bootstrap, names)
    assert counts == {n: 3 for n in names}
