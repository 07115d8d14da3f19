"""What `/health` reports: the worker's view of its broker, its topics, Redis and its own state.

`Health` is filled by one task (`agents.web.watch`) every PROBE_S seconds: a metadata request to
the broker through the worker's producer (connection, and the partition count of every topic the
worker uses), and a PING to Redis. The worker is ready when the broker answers, every existing
topic has UPSELL_PARTITIONS partitions, Redis answers, no rebalance is under way and no log's
offsets went backwards; otherwise `/health` answers 503 with the reasons.

`OutageFilter` keeps a broker outage to a few log lines: the Kafka client logs an error for
every failed connection attempt (thousands in half a minute); the filter lets the first one
through, counts the rest, and `Health` logs one line when the broker is back, with the count.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

PROBE_S = 3.0

log = logging.getLogger(__name__)


@dataclass
class Check:
    ok: bool | None = None          # None: not probed yet
    detail: str = "not checked yet"
    since: float = field(default_factory=time.monotonic)

    def set(self, ok: bool, detail: str) -> bool:
        """Record a probe; True when the state changed."""
        changed = ok != self.ok
        if changed:
            self.since = time.monotonic()
        self.ok, self.detail = ok, detail
        return changed

    def as_dict(self) -> dict:
        return {"ok": bool(self.ok), "detail": self.detail,
                "for_s": round(time.monotonic() - self.since, 1)}


class OutageFilter(logging.Filter):
    """Passes a Kafka client's connection errors only while the broker was last seen up (the
    first of an outage); counts the others (`suppressed`)."""

    def __init__(self, health: "Health"):
        super().__init__()
        self.health = health
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or self.health.broker.ok is not False:
            return True
        self.suppressed += 1
        return False


class Health:
    """The worker's health, as probed (`probe_broker`, `probe_redis`) and as reported by the
    ingest (`offsets_went_back`)."""

    def __init__(self, partitions: int):
        self.partitions = partitions
        self.broker = Check()
        self.redis = Check()
        self.topics: dict[str, int] = {}
        self.regressions: list[dict] = []       # logs found below what the state applied
        self.filter = OutageFilter(self)

    def install_filter(self, names=("aiokafka", "faust.transport", "faust.tables", "mode")) -> None:
        for name in names:
            logging.getLogger(name).addFilter(self.filter)

    def broker_result(self, ok: bool, detail: str, topics: dict[str, int] | None = None) -> None:
        if topics is not None:
            self.topics = topics
        was = self.broker.ok
        if self.broker.set(ok, detail):
            if ok and was is None:
                log.info("broker reachable (%s)", detail)
            elif ok:
                log.warning("broker reachable again (%s); %d connection errors were not logged during "
                            "the outage", detail, self.filter.suppressed)
                self.filter.suppressed = 0
            else:
                log.error("broker unreachable: %s; further connection errors are counted, not logged, "
                          "until it is back", detail)

    def redis_result(self, ok: bool, detail: str) -> None:
        was = self.redis.ok
        if self.redis.set(ok, detail):
            if not ok:
                log.error("Redis unreachable: %s", detail)
            elif was is not None:
                log.warning("Redis reachable again: %s", detail)

    def offsets_went_back(self, topic: str, partition: int, applied: int, log_end: int, action: str) -> None:
        """An input log found ending at or below an offset the state has applied; `action` is
        what the worker does (UPSELL_OFFSETS_BACKWARDS): "stop" or "reapply"."""
        self.regressions.append({"topic": topic, "partition": partition, "applied_offset": applied,
                                 "log_end_offset": log_end, "action": action})

    def warnings(self) -> list[str]:
        """What the worker works on despite, and an operator should look at."""
        re_applied = [r for r in self.regressions if r["action"] == "reapply"]
        if not re_applied:
            return []
        return ["offsets went backwards on %s: their records were applied again from the new log" % ", ".join(
            f"{r['topic']}/{r['partition']}" for r in re_applied)]

    def wrong_topics(self) -> dict[str, int]:
        return {t: n for t, n in sorted(self.topics.items()) if n != self.partitions}

    def problems(self, rebalancing: bool) -> list[str]:
        out = []
        if not self.broker.ok:
            out.append(f"broker: {self.broker.detail}")
        wrong = self.wrong_topics()
        if wrong:
            out.append("partition counts differ from UPSELL_PARTITIONS=%d: %s" % (
                self.partitions, ", ".join(f"{t} has {n}" for t, n in wrong.items())))
        if not self.redis.ok:
            out.append(f"redis: {self.redis.detail}")
        if rebalancing:
            out.append("consumer group: rebalancing")
        stopped = [r for r in self.regressions if r["action"] != "reapply"]
        if stopped:
            out.append(f"offsets went backwards on {len(stopped)} topic-partition(s): stopping")
        return out
