"""Every topic and table, named explicitly.

All input topics, `ticks` and the outputs have the same partition count and
are keyed by customer_id, so they are co-partitioned: partition p of every
topic belongs to the same worker and no repartitioning is needed. Table names
become changelog topics (`<app_id>-<table>-changelog`): never rename them.
"""
from __future__ import annotations

import faust

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


class Table(faust.Table):
    """A table that keeps, per changelog partition, the future of its latest write. Faust
    resolves it once the broker has the write, and a partition's writes land in order: so once
    it is done, every earlier write to that partition is in the changelog too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_write: dict[int, faust.types.FutureMessage] = {}

    def send_changelog(self, partition, key, value, key_serializer=None, value_serializer=None):
        fut = super().send_changelog(partition, key, value, key_serializer, value_serializer)
        self.last_write[fut.message.partition] = fut
        return fut


# Per-customer state, one orjson document per customer, and per partition a document of what
# cannot be derived from the customers (watermarks, counters) under a key that is not UTF-8
# (`agents.engine.meta_key`), so that it shares the customers' changelog partition and order.
customer_state = app.tables.add(Table(app, name="customer-state", partitions=N, key_type=bytes,
                                      value_type=bytes, beacon=app.tables.beacon))
# Where earlier versions kept the partition documents: read, never written.
partition_state = app.Table("partition-state", partitions=N, key_type=bytes, value_type=bytes)
