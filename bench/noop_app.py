"""The framework's ceiling on its per-record path: a Faust app with one agent per input topic (raw
bytes, the same consumer settings and log level: `streams.transport.App`) whose agents do nothing
with each event.

    python bench/noop_app.py worker -l warning      (configured by the UPSELL_* environment)

With NOOP_INBOX=1, the input topics go through an inbox instead (`streams.inbox`, the worker's
path), to a task that only acknowledges each record: the ceiling of the path
the worker takes, so the worker's rate against it is what its own work costs.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rules.engine import INPUT_TOPICS  # noqa: E402
from streams.inbox import Inbox  # noqa: E402
from streams.settings import Settings, use_event_loop  # noqa: E402
from streams.transport import App  # noqa: E402

INBOX_MODE = os.environ.get("NOOP_INBOX") == "1"
settings = Settings.from_env()
app = App(
    settings.app_id + ("-noop-inbox" if INBOX_MODE else "-noop"),     # a consumer group each
    broker=settings.broker, store="memory://", topic_partitions=settings.partitions,
    key_serializer="raw", value_serializer="raw", web_port=settings.web_port, web_host=settings.web_host,
    web_bind=settings.web_host, datadir=settings.data_dir, broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=settings.heartbeat_interval, topic_allow_declare=False,
    fetch_max_wait_ms=settings.fetch_max_wait_ms, consumer_thread=settings.consumer_thread,
    full_gc_interval=settings.full_gc_interval,
)
app.worker_process_settings()       # as the worker: the same garbage collector settings
COUNT = [0]
SPAN = [None, None]      # monotonic times of the first and the latest record counted


def counted() -> None:
    COUNT[0] += 1
    SPAN[1] = time.monotonic()
    if SPAN[0] is None:
        SPAN[0] = SPAN[1]


def _topic(topic: str):
    return app.topic(settings.topic_prefix + topic, partitions=settings.partitions)


def _agent(topic: str):
    async def noop(stream):
        async for _event in stream.events():
            counted()
    noop.__name__ = noop.__qualname__ = "noop_" + topic.replace("-", "_")
    return app.agent(_topic(topic), name=f"noop-{topic}")(noop)


if INBOX_MODE:
    INBOX = Inbox(app, {t: _topic(t) for t in INPUT_TOPICS})

    @app.task
    async def drain():
        ack = app.consumer.ack

        async def count(message):
            counted()
            ack(message)
        await INBOX.run(count)
else:
    AGENTS = [_agent(t) for t in INPUT_TOPICS]


@app.page("/count")
async def count(web, request):
    """Records counted, and the seconds from the first to the latest (the in-process span: the
    inbox path drains the benchmark's backlog faster than a poll every 200 ms can time it)."""
    span = SPAN[1] - SPAN[0] if SPAN[0] is not None else None
    return web.json({"events": COUNT[0], "seconds": span})


if __name__ == "__main__":
    use_event_loop(settings.event_loop)     # the worker's loop, so ratio_noop compares like with like
    app.main()
