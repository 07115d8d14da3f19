"""The framework's ceiling: a Faust app shaped like the worker (one agent per input topic,
raw bytes, the same consumer settings and log level: `streams.transport.App`) whose agents do
nothing with each event.

    python bench/noop_app.py worker -l warning      (configured by the UPSELL_* environment)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rules.engine import INPUT_TOPICS  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.transport import App  # noqa: E402

settings = Settings.from_env()
app = App(
    settings.app_id + "-noop", broker=settings.broker, store="memory://", topic_partitions=settings.partitions,
    key_serializer="raw", value_serializer="raw", web_port=settings.web_port, web_host=settings.web_host,
    web_bind=settings.web_host, datadir=settings.data_dir, broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=min(3.0, settings.session_timeout / 3), topic_allow_declare=False,
    fetch_max_wait_ms=settings.fetch_max_wait_ms,
)
COUNT = [0]


def _agent(topic: str):
    async def noop(stream):
        async for _event in stream.events():
            COUNT[0] += 1
    noop.__name__ = noop.__qualname__ = "noop_" + topic.replace("-", "_")
    channel = app.topic(settings.topic_prefix + topic, partitions=settings.partitions)
    return app.agent(channel, name=f"noop-{topic}")(noop)


AGENTS = [_agent(t) for t in INPUT_TOPICS]


@app.page("/count")
async def count(web, request):
    return web.json({"events": COUNT[0]})


if __name__ == "__main__":
    app.main()
