"""Every topic and table, named explicitly.

All input topics, `ticks` and the outputs have the same partition count and
are keyed by customer_id, so they are co-partitioned: partition p of every
topic belongs to the same worker and no repartitioning is needed. Table names
become changelog topics (`<app_id>-<table>-changelog`): never rename them.
"""
from __future__ import annotations

from rules.engine import INPUT_TOPICS
from streams.app import app, settings

P = settings.topic_prefix
N = settings.partitions


def _topic(name: str):
    return app.topic(P + name, partitions=N, key_serializer="raw", value_serializer="raw")


inputs = {name: _topic(name) for name in INPUT_TOPICS}
ticks = _topic("ticks")
proposals = _topic("proposals")
suppressed = _topic("proposals.suppressed")
dead_letters = _topic("dead-letters")

# Per-customer state, one orjson document per customer, and per partition a document of what
# cannot be derived from the customers (watermarks, counters) under a key that is not UTF-8
# (`agents.engine.meta_key`), so that it shares the customers' changelog partition and order.
customer_state = app.Table("customer-state", partitions=N, key_type=bytes, value_type=bytes)
# Where earlier versions kept the partition documents: read, never written.
partition_state = app.Table("partition-state", partitions=N, key_type=bytes, value_type=bytes)
