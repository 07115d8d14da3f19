"""The worker's HTTP views (agents/web.py): what its broker probe asks about."""
from __future__ import annotations

from agents.web import topic_names
from streams import topics as T
from streams.replay import TOPICS


def test_the_broker_probe_counts_the_partitions_of_every_topic_and_the_changelog():
    """/health reports a topic whose partition count is not UPSELL_PARTITIONS: every topic the
    worker creates at start (inputs, repartition, decisions, lifecycle, dead letters) and the
    state changelog."""
    assert set(topic_names()) == {T.P + t for t in TOPICS} | {T.customer_state.changelog_topic.get_topic_name()}
