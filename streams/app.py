"""The one Faust app. Agents live in `agents/` and are found by autodiscovery.

Run it with `upsell worker` (or `faust -A streams.app worker`).
"""
from __future__ import annotations

import logging

from rules.config import load_rules
from streams import metrics
from streams.health import Health
from streams.settings import Settings, package_version
from streams.transport import App

settings = Settings.from_env()
rules = load_rules(settings.rules)   # a bad rules file fails here, at start
health = Health(settings.partitions)     # what /health reports (agents/web.py)

app = App(
    settings.app_id,
    broker=settings.broker,
    store=settings.store,
    origin="streams",
    autodiscover=["agents"],
    topic_partitions=settings.partitions,
    key_serializer="raw",
    value_serializer="raw",
    web_port=settings.web_port,
    web_host=settings.web_host,
    web_bind=settings.web_host,
    datadir=settings.data_dir,
    # The first JoinGroup completes only after the group's session timeout on the
    # embedded broker (Faust's default 60 s gave a ~30 s start); 6-10 s gives a
    # start in seconds and a take-over within that time when a worker dies.
    broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=settings.heartbeat_interval,
    topic_allow_declare=True,
    topic_replication_factor=settings.replication_factor,
    # Events waiting for stream time stay unacknowledged (agents/ingest.py); a rebalance
    # must not wait for them: they are read again by the partition's next owner.
    stream_wait_empty=False,
    producer_linger_ms=5,
    fetch_max_wait_ms=settings.fetch_max_wait_ms,
    consumer_thread=settings.consumer_thread,
    full_gc_interval=settings.full_gc_interval,
    broker_credentials=settings.kafka.faust_credentials(),
    # Faust's own pages (/router/, /table/, /graph/, statistics) show internals: off unless asked for
    web_router_enabled=settings.web_internal,
    web_tables_enabled=settings.web_internal,
    web_graph_enabled=settings.web_internal,
    web_stats_enabled=settings.web_internal,
)
app.worker_process_settings()      # the garbage collector's settings: this process is a worker


metrics.BUILD.info({"version": package_version(), "rules": rules.source, "rules_sha256": rules.digest})


@app.task
async def announce() -> None:
    """One line at start: what this worker runs and where its data goes."""
    logging.getLogger("upsell").info(
        "upsell-engine %s worker: rules %s (sha256 %s), clock %s, lateness %d ms, %d partitions, "
        "broker %s, redis %s, store %s", package_version(), rules.source, rules.digest, settings.clock, settings.lateness_ms,
        settings.partitions, settings.broker, settings.redis_url_redacted, settings.store)
