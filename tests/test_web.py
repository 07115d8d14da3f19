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


class _Consumer:
    """What `ReadModel` reads of its consumer: the assignment and each partition's end offset."""

    def __init__(self, ends: dict):
        self.ends = ends

    def assignment(self):
        return set(self.ends)

    def highwater(self, tp):
        return self.ends[tp]


def test_the_read_models_lag_and_partitions_come_from_its_own_consumer_and_offsets(monkeypatch):
    from aiokafka import TopicPartition

    from agents import readmodel
    from streams.app import app
    proposals, status = T.proposals.get_topic_name(), T.status.get_topic_name()
    monkeypatch.setattr(app, "readmodel", None)
    assert readmodel.lag() == {"proposals": 0, "suppressed": 0, "status": 0}      # not running
    assert readmodel.assigned() == {"proposals": [], "suppressed": [], "status": []}
    ends = {TopicPartition(proposals, 3): 10, TopicPartition(proposals, 1): 7, TopicPartition(status, 3): 4}
    rm = readmodel.ReadModel(_Consumer(ends))
    rm.written.update({TopicPartition(proposals, 3): 6, TopicPartition(status, 3): 4})   # 1: none written yet
    monkeypatch.setattr(app, "readmodel", rm)
    assert readmodel.lag() == {"proposals": 4, "suppressed": 0, "status": 0}
    assert readmodel.assigned() == {"proposals": [1, 3], "suppressed": [], "status": [3]}
