"""What the latency goal leaves a worker on this machine: a relay that does a live worker's Kafka
I/O and nothing else (bench/README.md).

    python bench/relay.py BOOTSTRAP PREFIX [--partitions 8] [--lateness-ms 20]
                          [--fetch-max-wait-ms 10] [--every 24] [--cpu-us 0]

It reads every partition of PREFIX + each input topic from its end (assigned, not as a group: a
worker's group costs heartbeats, not fetches), the way the live worker reads them: aiokafka on
uvloop, the same fetch wait, each value decoded with orjson. Every
EVERY-th record is held until the wall clock passes its timestamp plus the lateness (the worker's
stream time releases an event then), and a decision for it goes to PREFIX + proposals at once,
keyed like the record, with the record's time as its created_at (the worker stamps a decision
with its event's time), so the benchmark's collector measures both the same way.

With --cpu-us, each record first costs that much CPU time of this thread: a stand-in for a
worker's own work per event. It is CPU time, not wall time: while the broker or the load
generator has the core, the relay waits without counting it as work, as a worker would.

It prints "ready" once its positions are at the partitions' ends.
"""
from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from rules.engine import INPUT_TOPICS  # noqa: E402
from rules.timeutil import format_ts  # noqa: E402
from streams.settings import use_event_loop  # noqa: E402

TRIGGER = "usage_limit"     # an event-driven trigger: the benchmark's collector counts it


class Held:
    """Items held until a due time (ms), released in due order (ties: in the order held)."""

    def __init__(self):
        self._heap: list = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, due_ms: int, item) -> None:
        heapq.heappush(self._heap, (due_ms, next(self._seq), item))

    def next_due(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def release(self, now_ms: float) -> list:
        """The items due at or before `now_ms`, earliest first; they are no longer held."""
        heap, out = self._heap, []
        while heap and heap[0][0] <= now_ms:
            out.append(heapq.heappop(heap)[2])
        return out


def spend(cpu_s: float) -> None:
    """Use `cpu_s` seconds of this thread's CPU time."""
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        pass


def decision(key: bytes | None, ts_ms: int) -> bytes:
    return orjson.dumps({"customer_id": key.decode() if key else None, "trigger": TRIGGER,
                         "created_at": format_ts(ts_ms)})


async def relay(a) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=a.bootstrap, fetch_max_wait_ms=a.fetch_max_wait_ms)
    consumer.assign([TopicPartition(a.prefix + t, p) for t in INPUT_TOPICS for p in range(a.partitions)])
    producer = AIOKafkaProducer(bootstrap_servers=a.bootstrap, linger_ms=0)
    await producer.start()
    await consumer.start()
    await consumer.seek_to_end()
    print("ready", flush=True)
    held, wake, out, cpu_s = Held(), asyncio.Event(), a.prefix + "proposals", a.cpu_us / 1e6

    async def release():
        while True:
            due = held.next_due()
            wait = None if due is None else due / 1000 - time.time()
            if wait is None or wait > 0:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), wait)    # the next due time, or a new item
                except TimeoutError:
                    pass
                continue
            for key, ts in held.release(time.time() * 1000):
                await producer.send(out, key=key, value=decision(key, ts))

    task = asyncio.create_task(release())
    n = 0
    try:
        while True:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for r in records:
                    if cpu_s:
                        spend(cpu_s)
                    try:
                        orjson.loads(r.value)
                    except orjson.JSONDecodeError:      # the stream's invalid records
                        pass
                    n += 1
                    if n % a.every == 0:
                        held.hold(r.timestamp + a.lateness_ms, (r.key, r.timestamp))
                        wake.set()
    finally:
        task.cancel()
        await consumer.stop()
        await producer.stop()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bootstrap")
    ap.add_argument("prefix")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--lateness-ms", type=int, default=20)
    ap.add_argument("--fetch-max-wait-ms", type=int, default=10)
    ap.add_argument("--every", type=int, default=24, help="a decision for every this many records")
    ap.add_argument("--cpu-us", type=float, default=0.0, help="CPU time spent on each record, µs")
    a = ap.parse_args(argv)
    use_event_loop("uvloop")
    asyncio.run(relay(a))


if __name__ == "__main__":
    main()
