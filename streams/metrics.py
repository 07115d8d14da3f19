"""Process-level counters for /metrics (Prometheus text format)."""
from __future__ import annotations

from collections import Counter

events_in: Counter = Counter()          # topic
dead_letters: Counter = Counter()       # topic
proposals_out: Counter = Counter()      # trigger
suppressed_out: Counter = Counter()     # (trigger, reason)
late_events: Counter = Counter()        # topic
readmodel_written: Counter = Counter()  # kind (proposals, suppressed): new in Redis
read_offsets: dict = {}                 # (topic, partition) -> last offset read
far_ahead: Counter = Counter()          # topic: events dropped as far ahead of a later record
wrong_partition: Counter = Counter()    # topic: records on a partition their key does not hash to
misplaced_customers: dict = {}          # partition -> restored documents whose key hashes elsewhere
offset_regressions: Counter = Counter()  # (topic, partition): logs found below the applied offsets


def render(highwater, clock_moves: int | None = None, unsent_bytes: int | None = None,
           waiting: dict[int, int] | None = None) -> str:
    """`highwater(topic, partition)` -> next offset to be written, or None; `clock_moves`: how many
    times the live clock has moved stream time (None with the event clock); `unsent_bytes`: bytes
    of state writes and decisions handed to Kafka and not yet in the broker; `waiting`: partition
    -> input events read and waiting for stream time there."""
    lines = []

    def family(name, help_, kind, samples):
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

    family("upsell_events_in_total", "Input events consumed.", "counter",
           [((("topic", t),), n) for t, n in sorted(events_in.items())])
    family("upsell_dead_letters_total", "Records rejected to the dead-letter topic (input events; unreadable proposals and suppressions).", "counter",
           [((("topic", t),), n) for t, n in sorted(dead_letters.items())])
    family("upsell_late_events_total", "Events older than the partition watermark.", "counter",
           [((("topic", t),), n) for t, n in sorted(late_events.items())])
    family("upsell_readmodel_written_total", "Decisions the read model wrote to Redis for the first time "
           "(a record written again is not counted).", "counter",
           [((("kind", k),), n) for k, n in sorted(readmodel_written.items())])
    family("upsell_proposals_total", "Proposals emitted.", "counter",
           [((("trigger", t),), n) for t, n in sorted(proposals_out.items())])
    family("upsell_suppressed_total", "Proposals suppressed by a guardrail.", "counter",
           [((("trigger", t), ("reason", r)), n) for (t, r), n in sorted(suppressed_out.items())])
    family("upsell_far_ahead_total", "Input events dropped as dead letters: their time was more than "
           "UPSELL_MAX_AHEAD_MS ahead of a later record on their topic-partition.", "counter",
           [((("topic", t),), n) for t, n in sorted(far_ahead.items())])
    family("upsell_wrong_partition_total", "Input records on a partition their key does not hash to "
           "(murmur2); see UPSELL_WRONG_PARTITION.", "counter",
           [((("topic", t),), n) for t, n in sorted(wrong_partition.items())])
    family("upsell_misplaced_customers", "Customer documents restored from a changelog partition their key "
           "does not hash to (kept, not dropped).", "gauge",
           [((("partition", p),), n) for p, n in sorted(misplaced_customers.items())])
    family("upsell_offset_regressions_total", "Input logs found below the offsets the state has applied "
           "(topic re-created, truncated, broker reset).", "counter",
           [((("topic", t), ("partition", p)), n) for (t, p), n in sorted(offset_regressions.items())])
    lag = []
    for (topic, partition), offset in sorted(read_offsets.items()):
        hw = highwater(topic, partition)
        if hw is not None:
            lag.append(((("topic", topic), ("partition", partition)), max(0, hw - offset - 1)))
    family("upsell_consumer_lag", "Records not yet read, per input partition.", "gauge", lag)
    if waiting is not None:
        family("upsell_events_waiting", "Input events read and waiting for stream time (not yet applied, "
               "not acknowledged), per partition engine.", "gauge",
               [((("partition", p),), n) for p, n in sorted(waiting.items())])
    if unsent_bytes is not None:
        family("upsell_unsent_bytes", "State writes and decisions handed to Kafka, not yet confirmed "
               "by the broker; a batch end waits while this is over UPSELL_MAX_UNSENT_MB.", "gauge", [((), unsent_bytes)])
    if clock_moves is not None:
        family("upsell_clock_moves_total", "Moves of this worker's live clock (stream time): one each "
               "UPSELL_TICK_INTERVAL, more while events wait (at most one per UPSELL_CLOCK_RESOLUTION_MS).",
               "counter", [((), clock_moves)])
    return "\n".join(lines) + "\n"
