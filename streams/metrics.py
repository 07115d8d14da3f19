"""The worker's metrics, exposed in Prometheus' text format by prometheus_client.

The counters the ingest moves for every record are plain `Counter`s (an increment is a dict
operation; a prometheus_client counter's takes a lock), read at each scrape by `WorkerCollector`.
Decision latency is a prometheus_client histogram, observed once per decision. Process and
Python metrics (CPU, memory, open files, garbage collections) come with prometheus_client.
"""
from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, GCCollector, Histogram, Info, PlatformCollector, ProcessCollector
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

events_in: Counter = Counter()          # topic
dead_letters: Counter = Counter()       # topic
proposals_out: Counter = Counter()      # trigger
suppressed_out: Counter = Counter()     # (trigger, reason)
late_events: Counter = Counter()        # topic
readmodel_written: Counter = Counter()  # kind (proposals, suppressed, status): new in Redis
read_offsets: dict = {}                 # (topic, partition) -> last offset read
far_ahead: Counter = Counter()          # topic: events dropped as far ahead of a later record
wrong_partition: Counter = Counter()    # topic: records on a partition their key does not hash to
misplaced_customers: dict = {}          # partition -> restored documents whose key hashes elsewhere
offset_regressions: Counter = Counter()  # (topic, partition): logs found below the applied offsets
status_out: Counter = Counter()         # (trigger, status, group): proposal-status records sent
revenue_out: Counter = Counter()        # (trigger, measure): expansion_mrr, contraction_mrr, order_value


def count_status(r: dict) -> None:
    """A proposal-status record sent: counted per trigger and state, its revenue per trigger."""
    status_out[(r["trigger"], r["status"], "holdout" if r["holdout"] else "treated")] += 1
    if r["holdout"]:
        return
    for name, value in r.get("revenue", {}).items():
        if name == "expansion_mrr":         # a counter only grows: a downsell's is contraction
            revenue_out[(r["trigger"], "expansion_mrr" if value >= 0 else "contraction_mrr")] += abs(value)
        elif name == "order_value":
            revenue_out[(r["trigger"], name)] += value

# Live (wall clock): from a decision's created_at (its event's time, or its timer's due moment) to
# its send. The floor is UPSELL_LATENESS_MS: stream time passes an event that long after it.
DECISION_LATENCY = Histogram(
    "upsell_decision_latency_seconds", "From a decision's event time (created_at) to its send, live.",
    ["trigger"], registry=None,
    buckets=(0.5, 1, 1.5, 2, 2.05, 2.1, 2.25, 2.5, 3, 4, 5, 7.5, 10, 30, 60, float("inf")))


_LATENCY_BY_TRIGGER: dict = {}     # trigger -> its child of DECISION_LATENCY (labels() takes a lock)


def observe_latency(trigger: str, ms: int) -> None:
    """A live decision of `trigger`, `ms` after its event time."""
    child = _LATENCY_BY_TRIGGER.get(trigger)
    if child is None:
        child = _LATENCY_BY_TRIGGER[trigger] = DECISION_LATENCY.labels(trigger)
    child.observe(ms / 1000)


# What runs: the package version and the rules file (its name and digest); set at start.
BUILD = Info("upsell_build", "The worker's version and the rules file it runs.", registry=None)


class WorkerCollector:
    """The counters above and the gauges of the moment, as metric families."""

    def __init__(self, highwater, clock_moves: int | None, unsent_bytes: int | None,
                 waiting: dict[int, int] | None):
        self.highwater, self.clock_moves = highwater, clock_moves
        self.unsent_bytes, self.waiting = unsent_bytes, waiting

    def collect(self):
        yield _counter("upsell_events_in", "Input events consumed.", ["topic"], events_in)
        yield _counter("upsell_dead_letters", "Records rejected to the dead-letter topic (input events; "
                       "unreadable proposals and suppressions).", ["topic"], dead_letters)
        yield _counter("upsell_late_events", "Events older than the partition watermark.", ["topic"], late_events)
        yield _counter("upsell_readmodel_written", "Decisions the read model wrote to Redis for the first time "
                       "(a record written again is not counted).", ["kind"], readmodel_written)
        yield _counter("upsell_proposals", "Proposals emitted.", ["trigger"], proposals_out)
        yield _counter("upsell_suppressed", "Proposals suppressed by a guardrail.", ["trigger", "reason"],
                       suppressed_out)
        yield _counter("upsell_proposal_status", "Lifecycle transitions sent to proposal-status (group: "
                       "treated, or holdout).", ["trigger", "status", "group"], status_out)
        yield _counter("upsell_conversion_revenue", "Revenue of the treated group's conversions: the "
                       "expansion MRR, the contraction MRR of downsells, and the order value of cross-sell offers.",
                       ["trigger", "measure"], revenue_out)
        yield _counter("upsell_far_ahead", "Input events dropped as dead letters: their time was more than "
                       "UPSELL_MAX_AHEAD_MS ahead of a later record on their topic-partition.", ["topic"], far_ahead)
        yield _counter("upsell_wrong_partition", "Input records on a partition their key does not hash to "
                       "(murmur2); see UPSELL_WRONG_PARTITION.", ["topic"], wrong_partition)
        yield _gauge("upsell_misplaced_customers", "Customer documents restored from a changelog partition their "
                     "key does not hash to (kept, not dropped).", ["partition"], misplaced_customers)
        yield _counter("upsell_offset_regressions", "Input logs found below the offsets the state has applied "
                       "(topic re-created, truncated, broker reset).", ["topic", "partition"], offset_regressions)
        lag = {}
        for (topic, partition), offset in read_offsets.items():
            hw = self.highwater(topic, partition)
            if hw is not None:
                lag[(topic, partition)] = max(0, hw - offset - 1)
        yield _gauge("upsell_consumer_lag", "Records not yet read, per input partition.", ["topic", "partition"], lag)
        if self.waiting is not None:
            yield _gauge("upsell_events_waiting", "Input events read and waiting for stream time (not yet "
                         "applied, not acknowledged), per partition engine.", ["partition"], self.waiting)
        if self.unsent_bytes is not None:
            yield GaugeMetricFamily("upsell_unsent_bytes", "State writes and decisions handed to Kafka, not yet "
                                    "confirmed by the broker; a batch end waits while this is over "
                                    "UPSELL_MAX_UNSENT_MB.", value=self.unsent_bytes)
        if self.clock_moves is not None:
            yield CounterMetricFamily("upsell_clock_moves", "Moves of this worker's live clock (stream time): one "
                                      "each UPSELL_TICK_INTERVAL, more while events wait (at most one per "
                                      "UPSELL_CLOCK_RESOLUTION_MS).", value=self.clock_moves)


def _labels(key) -> list[str]:
    return [str(k) for k in key] if isinstance(key, tuple) else [str(key)]


def _counter(name: str, help_: str, labels: list[str], values: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_, labels=labels)
    for key, n in sorted(values.items()):
        family.add_metric(_labels(key), n)
    return family


def _gauge(name: str, help_: str, labels: list[str], values: dict) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_, labels=labels)
    for key, n in sorted(values.items()):
        family.add_metric(_labels(key), n)
    return family


def render(highwater, clock_moves: int | None = None, unsent_bytes: int | None = None,
           waiting: dict[int, int] | None = None) -> str:
    """The /metrics page. `highwater(topic, partition)` -> next offset to be written, or None;
    `clock_moves`: how many times the live clock has moved stream time (None with the event
    clock); `unsent_bytes`: bytes of state writes and decisions handed to Kafka and not yet in the
    broker; `waiting`: partition -> input events read and waiting for stream time there."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(highwater, clock_moves, unsent_bytes, waiting))
    registry.register(DECISION_LATENCY)
    registry.register(BUILD)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return generate_latest(registry).decode()
