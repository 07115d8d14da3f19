"""An example downstream consumer of `proposals`: a notification service.

    python examples/notification_service.py [--group notifier] [--quiet-hours 22-8]

It reads `proposals` and `proposal-status` (consumer group `--group`, offsets committed once a
batch is handled), and for each proposal:

1. dedupes on `proposal_id`: the engine delivers at least once, so a proposal can arrive twice;
2. holds it until it may be sent: not during quiet hours (UTC), so one created at 23:10 waits
   for 08:00;
3. drops it if it is no longer true when it may be sent: `valid_until` has passed by then, or a
   `proposal-status` record said `withdrawn` (the offer stopped being true) or `converted` (the
   customer already did it) while it was held;
4. "sends" it (prints one line; a real service calls its mail or in-app API here);
5. writes the customer's answer back to `proposal-outcomes`, keyed by customer_id and stamped
   with the send time, so the engine's guardrails (the decline cooldown) see it in event time.
   Here a stand-in (`answer`) derives the answer from the id; a real service writes it when the
   customer clicks.

The broker and topic names come from the engine's environment (UPSELL_BROKER,
UPSELL_TOPIC_PREFIX). `Outbox` is the whole policy, pure and clock-injected; `run` is the Kafka
shell around it.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import os
import sys
import time
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

HOUR = 3_600_000
DAY = 24 * HOUR


def parse_ts(text: str) -> int:
    """An RFC 3339 UTC time ("2025-01-09T00:00:00Z") in epoch milliseconds."""
    from datetime import datetime
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def send_time(created_ms: int, quiet: tuple[int, int]) -> int:
    """The first moment at or after `created_ms` outside the quiet hours [start, end) (UTC)."""
    start, end = quiet
    hour = created_ms % DAY // HOUR
    in_quiet = (start <= hour or hour < end) if start > end else (start <= hour < end)
    if not in_quiet:
        return created_ms
    day = created_ms - created_ms % DAY
    opens = day + end * HOUR
    return opens if opens > created_ms else opens + DAY


def answer(proposal_id: str) -> str:
    """A stand-in for the customer's reply, fixed by the id: 3 in 10 accept, 2 decline, the rest
    ignore the message."""
    n = int(hashlib.blake2b(proposal_id.encode(), digest_size=2).hexdigest(), 16) % 10
    return "accepted" if n < 3 else "declined" if n < 5 else "ignored"


@dataclass
class Outbox:
    """The policy: proposals in (`offer`), lifecycle records in (`status`), what to send and
    what to drop out (`due`)."""
    quiet: tuple[int, int] = (22, 8)
    seen: dict = field(default_factory=dict)       # proposal_id -> valid_until (ms), for dedupe
    held: list = field(default_factory=list)       # heap of (send time, proposal_id, proposal, where read)
    pending: set = field(default_factory=set)      # the proposal_ids in `held`
    cancelled: dict = field(default_factory=dict)  # proposal_id -> (why it must not be sent, event time)
    statuses: int = 0                              # lifecycle records read

    def status(self, r: dict) -> None:
        """A proposal-status record: a proposal withdrawn, or converted already, is not sent. It
        may come before its proposal (the topics are read side by side); one about a proposal
        already handled changes nothing."""
        self.statuses += 1
        pid = r["proposal_id"]
        if r["status"] not in ("withdrawn", "converted") or (pid in self.seen and pid not in self.pending):
            return
        why = f"withdrawn ({r['reason']})" if r["status"] == "withdrawn" else f"converted already ({r['via']})"
        self.cancelled[pid] = (why, parse_ts(r["at"]))
        # one about a proposal never read (handled before a restart): forgotten after 90 days
        latest = max(at for _, at in self.cancelled.values())
        self.cancelled = {i: c for i, c in self.cancelled.items() if i in self.seen or c[1] > latest - 90 * DAY}

    def offer(self, p: dict, where=None) -> bool:
        """Queue a proposal (`where` it was read: (partition, offset)); False for one already seen
        (a redelivery)."""
        if p["proposal_id"] in self.seen:
            return False
        until = parse_ts(p["valid_until"])
        self.seen[p["proposal_id"]] = until
        heapq.heappush(self.held, (send_time(parse_ts(p["created_at"]), self.quiet), p["proposal_id"], p, where))
        self.pending.add(p["proposal_id"])
        return True

    def oldest_held(self) -> dict:
        """partition -> the lowest offset still held: a commit must not pass it, or a restart
        would lose what waits."""
        out: dict = {}
        for *_, where in self.held:
            if where is not None:
                out[where[0]] = min(out.get(where[0], where[1]), where[1])
        return out

    def due(self, now_ms: int) -> list[tuple]:
        """("send", send time, proposal) or ("drop", send time, proposal, why) for every held
        proposal whose send time has come, in send-time order: one withdrawn or converted while
        held, or whose valid_until is not after its send time, is dropped."""
        out = []
        while self.held and self.held[0][0] <= now_ms:
            at, _, p, _ = heapq.heappop(self.held)
            self.pending.discard(p["proposal_id"])
            why = self.cancelled.pop(p["proposal_id"], (None,))[0]
            if why is None and at >= self.seen[p["proposal_id"]]:
                why = "no longer valid when it could be sent"
            out.append(("send", at, p) if why is None else ("drop", at, p, why))
        # ids are remembered until their proposal's end: a redelivery after that is stale anyway
        self.seen = {i: u for i, u in self.seen.items() if u > now_ms - DAY}
        return out


def outcome_record(p: dict, outcome: str) -> bytes:
    return orjson.dumps({"customer_id": p["customer_id"], "proposal_id": p["proposal_id"],
                         "trigger": p["trigger"], "offer": p["offer"], "outcome": outcome})


async def run(bootstrap: str, prefix: str = "", group: str = "notifier", quiet=(22, 8), clock=None,
              out=sys.stdout, stop: asyncio.Event | None = None, box: Outbox | None = None) -> None:
    """Consume `<prefix>proposals` and `<prefix>proposal-status` until `stop` is set (or forever);
    `clock()` is now in epoch ms. The status topic's offsets are committed only while nothing is
    held, so a restart that reads held proposals again reads their lifecycle records again too."""
    clock = clock or (lambda: int(time.time() * 1000))
    consumer = AIOKafkaConsumer(prefix + "proposals", prefix + "proposal-status", bootstrap_servers=bootstrap,
                                group_id=group, enable_auto_commit=False, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    box = box or Outbox(quiet)
    stop = stop or asyncio.Event()
    read: dict = {}          # TopicPartition -> the offset after the last record read
    committed: dict = {}
    await consumer.start()
    await producer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                read[tp] = records[-1].offset + 1
                lifecycle = tp.topic.endswith("proposal-status")
                for r in records:
                    try:
                        if lifecycle:
                            box.status(orjson.loads(r.value))
                        else:
                            box.offer(orjson.loads(r.value), (tp, r.offset))
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        print(f"skipped a record that is not a {'status' if lifecycle else 'proposal'} "
                              f"(partition {r.partition}, offset {r.offset})", file=out)
            for action, at, p, *why in box.due(clock()):
                if action == "drop":
                    print(f"dropped {p['proposal_id']}: {why[0]}", file=out)
                    continue
                print(f"sent {p['proposal_id']} to {p['customer_id']}: {p['reason']}", file=out)
                await producer.send_and_wait(prefix + "proposal-outcomes", outcome_record(p, answer(p["proposal_id"])),
                                             key=p["customer_id"].encode(), timestamp_ms=at)
            held = box.oldest_held()
            commit = {tp: held.get(tp, end) for tp, end in read.items()
                      if not tp.topic.endswith("proposal-status") or not box.held}
            commit = {**committed, **commit}
            if commit and commit != committed:
                await consumer.commit(commit)     # up to the first record still held, per partition
                committed = commit
            out.flush()
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description="An example notification service reading `proposals`.")
    ap.add_argument("--group", default="notifier", help="consumer group (default notifier)")
    ap.add_argument("--quiet-hours", default="22-8", help="UTC hours with no sending, START-END (default 22-8)")
    a = ap.parse_args()
    try:
        start, end = (int(x) for x in a.quiet_hours.split("-"))
        assert 0 <= start < 24 and 0 <= end < 24
    except (ValueError, AssertionError):
        ap.error(f"--quiet-hours: expected START-END in hours, e.g. 22-8, got {a.quiet_hours!r}")
    broker = os.environ.get("UPSELL_BROKER", "kafka://localhost:9092").split("://", 1)[-1]
    try:
        asyncio.run(run(broker, os.environ.get("UPSELL_TOPIC_PREFIX", ""), a.group, (start, end)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
