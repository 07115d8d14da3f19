"""The benchmark: one run, one embedded broker, one generated stream, every number reported.

    python bench/run.py [--quick] [--customers N --days D] [--pace-ms MS] [--fixed-rate EPS]

Phases (all against the same tansu broker, same topics and partition count):

  raw        raw aiokafka consumer + orjson decode of every value  -> raw_eps (the client's ceiling)
  noop inbox bench/noop_app.py with NOOP_INBOX=1: the worker's path (an inbox, streams/inbox.py),
             each record only acknowledged -> noop_inbox_eps (the ceiling of the worker's path)
  noop       bench/noop_app.py: Faust, one agent per topic, no work  -> noop_eps (Faust's per-record
             path's ceiling: what `ratio_noop` compares with)
  worker     `upsell worker`: all rules, tables, outputs, Redis     -> worker_eps, and the CPU time
             the worker process used per event meanwhile -> backlog_cpu_us_per_event. The no-op
             agents and the worker run --pairs times (3), alternating, each pair with groups of
             its own and each worker with empty output topics (`empty_outputs`: its read model
             reads back its own decisions, not the earlier pairs' too): each key is the median
             of the pairs' (the pairs' own in <key>_pairs), and
             ratio_noop the median of the pairs' ratios. The worker is timed until
             it has read every event and sent as many decisions as the backtest of the same
             file (simulate_decisions) -> worker_decisions (one per pair, each the same number:
             same input, same output), and how long after the poll that found every event read
             that came, in polls of 50 ms, the longest of the pairs -> worker_decided_after_read_s
  raw lat.   raw aiokafka consumer at half of worker_eps, same broker and fetch wait: produce time
             -> record in the consumer -> raw_p50_ms, raw_p99_ms (the floor under the worker's)
             and raw_p99_ms_by_span (per third of the load, by produce time), with the broker's
             CPU per third -> raw_broker_cores_by_span
  latency    a fresh worker fed at half of worker_eps, events stamped with their produce time;
             produce time -> decision (proposal or suppression) on its topic -> p50_ms, p99_ms
             (and p99_after_warmup_ms: without the first WARM_S seconds of load); the worker's
             CPU time per event sent meanwhile -> live_cpu_us_per_event, and before the load,
             idle for IDLE_S seconds -> idle_cores; the worker's main thread and its other
             threads (Faust's consumer thread, with UPSELL_CONSUMER_THREAD=1) during the load ->
             live_main_thread_cores, live_other_threads_cores; per third of the load,
             p99_ms_by_span and the broker's CPU, broker_cores_by_span (it grows through the
             phase)
  relay      what the goal leaves a worker at that rate here: bench/relay.py, a process
             that reads the inputs as the live worker does (aiokafka on uvloop, the same fetch
             wait, orjson), holds one event in relay_every (the worker's share of event-driven
             decisions in the latency phase) for the lateness and sends a decision for it ->
             relay_p50_ms, relay_p99_ms, relay_cores; again spending relay_backlog_cost_spin_us of
             CPU on each event (backlog_cpu_us_per_event less 1e6 / raw_eps, what raw aiokafka
             spends per event on the backlog): a worker whose live event costs what a backlog one
             does, with nothing fixed -> relay_backlog_cost_p50_ms, relay_backlog_cost_p99_ms,
             relay_backlog_cost_cores
  ramp       if p99_ms misses 100 ms: the latency phase again at --ramp shares of worker_eps (0.25,
             0.2, 0.15, 0.1), highest first, until one meets it twice in a row (a step that
             meets it runs once more) -> ramp ([rate, p99 ms] of each run, half load
             first), goal_rate_eps (the highest rate at which every run met it, or null) and
             goal_rate_share (it / worker_eps): what a live worker can be sized for here; the
             relay spending a backlog event's CPU per event goes down the same shares the same
             way, each of its steps right after the worker's at that share (`interleaved_ramps`:
             a slow spell of the machine lands on both) -> relay_ramp, relay_goal_rate_eps, and
             goal_vs_relay (goal_rate_eps / relay_goal_rate_eps: the worker's live capacity
             against a worker whose live event costs a backlog one's); then the relay's CPU at
             its goal rate -> relay_goal_cores, and bench/noop_app.py on the inbox path fed at
             0.8 of that rate -> noop_inbox_live_cores (`noop_live_cores`: what the framework's
             path costs at the goal's rate before any rule runs)
  fixed      both again at --fixed-rate (3,000 events/s) -> fixed_p50_ms, fixed_p99_ms,
             fixed_raw_p99_ms, fixed_live_cpu_us_per_event, fixed_live_cores: a load that does
             not grow with the worker's backlog rate; the relay with no work at that rate ->
             fixed_relay_p99_ms, fixed_relay_cores (two hops and the lateness: the floor of
             any worker built this way); with a run at a rate the worker kept up with
             (`split_rate`: at half load it falls behind), the live worker's CPU as a fixed
             part and a part per event -> live_fixed_cores, live_marginal_us_per_event,
             live_cost_rates_eps
  state      100k customers (a profile and a usage sample each) through a fresh worker -> rss_mb_100k
             (its peak: every event waits for stream time, then all are applied and written); then
             a second worker restores them from the changelog -> rss_mb_100k_restored
  simulate   the offline backtest over the same file, --simulate-runs times (3), each run in one
             process then in two (--jobs 2) -> simulate_eps (the one-process median),
             simulate_eps_runs, simulate_jobs2_eps, simulate_jobs2_runs, simulate_jobs2_speedup
             (the median of the pairs' ratios); then read once, in order (`upsell simulate
             FILE`, streams/simulate.py) -> simulate_stream_eps; bench/backtest_large.py does the
             same on a year of 10,000 customers, with peak memory

The latency phases' load generator sends what is due every --pace-ms (20 ms; 5 before run L1):
tansu's cost per fetch grows with the number of produce batches a partition holds.

Throughput is measured on a backlog (everything produced first), while the consumer works through
it, so start-up and group joins are not counted: the worker's from polls of its /metrics (from the
first poll that saw events to the first that saw them all read and the backtest's number of
decisions sent: up to 200 ms slow), the no-op apps' in their own process (from the first record
counted to the last; the inbox variant drains the backlog in a fraction of a second). Absolute
numbers on a shared machine are noisy: compare the ratios, which come from one run on one broker
(`ratio_noop` from alternating pairs within it).
The last line printed is one JSON object with every key.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from rules.config import load_rules  # noqa: E402
from rules.engine import INPUT_TOPICS  # noqa: E402
from rules.timeutil import parse_ts  # noqa: E402
from streams.backtest import DEFAULT_MAX_AHEAD_MS, backtest_lines  # noqa: E402
from streams.embedded import EmbeddedBroker, EmbeddedRedis, WorkerProcess, cpu_seconds, free_port  # noqa: E402
from streams.generate import generate  # noqa: E402
from streams.kafka import ensure_topics  # noqa: E402
from streams.partitioning import partition_for  # noqa: E402
from streams.recorded import dumps, load_sorted  # noqa: E402
from streams.replay import replay  # noqa: E402
from streams.simulate import simulate  # noqa: E402

PARTITIONS = 8
EVENT_DRIVEN = {"usage_limit", "usage_forecast", "purchase", "co_purchase", "volume"}
OUTPUTS = ("proposals", "proposals.suppressed", "dead-letters")
WRITTEN = (*OUTPUTS, "proposal-status", "repartition")     # every topic a worker writes
POLL_S = 0.05       # `consume_rate`'s polls of another process's counts
FIRST_POLL_S = 0.01  # ... until it has read its first event: where the timing starts
WARM_S = 2      # the latency phase also reports its p99 without the first WARM_S seconds of load
SPANS = 3       # the latency phases report p99 and the broker's CPU per third of the load
IDLE_S = 2      # the latency phases first measure the live worker's CPU without load
LAST_S = 2      # the latency phases collect decisions this long after the load (the last ones arrive)
GOAL_P99_MS = 100   # the latency goal; the ramp looks for the highest rate that meets it


STARTED = time.monotonic()


def log(msg: str) -> None:
    """A progress line on stderr, with the seconds since the benchmark started (the quick run's
    budget is 10 minutes)."""
    print(f"{time.monotonic() - STARTED:4.0f} s  {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ processes --

def env_for(broker, redis, prefix: str, tmp: Path, **extra) -> dict:
    return {"UPSELL_BROKER": broker.url, "UPSELL_REDIS_URL": redis.url, "UPSELL_CLOCK": "event",
            "UPSELL_PARTITIONS": str(PARTITIONS), "UPSELL_WEB_PORT": str(free_port()),
            "UPSELL_APP_ID": prefix.rstrip("."), "UPSELL_TOPIC_PREFIX": prefix,
            "UPSELL_DATA_DIR": str(tmp / prefix), **extra}


def worker_events(p: WorkerProcess) -> int | None:
    try:
        return p.events_in()
    except OSError:          # not listening yet
        return None


def consume_rate(p: WorkerProcess, counter, total: int, timeout: float,
                 finished=None) -> tuple[float, float, float]:
    """Events/s of another process (nothing to await), from polls of its count: every
    FIRST_POLL_S until it has read an event (those polls fall before what is timed), then every
    POLL_S; from the first poll that saw events to the
    first that saw them all and, if `finished` is given, found `finished(p)` true; the CPU time
    it used per event meanwhile, in µs; and the seconds from the first poll that saw them all to
    that end (0 without `finished`). Its progress is not even: on a backlog the worker reads
    most events within a few hundred milliseconds, holding them until the other topics reach
    their event time, and spends the rest applying and writing them. A late first poll would
    leave out events already read while keeping the CPU of applying them, and read counts
    alone would end the rate when the last event is read, which only the inbox's backpressure
    keeps after the work: the worker's phase also waits for its decisions (`finished`)."""
    deadline = time.monotonic() + timeout
    first = read = None
    while time.monotonic() < deadline:
        p.alive()
        n = counter(p)
        now, cpu = time.monotonic(), p.cpu_seconds()
        if n:
            if first is None:
                first = (now, n, cpu)
            if n >= total:
                if first[1] >= total:
                    raise RuntimeError(f"{total} events consumed between two polls: too fast to time")
                read = read or now
                if finished is None or finished(p):
                    return ((n - first[1]) / max(now - first[0], 1e-9), (cpu - first[2]) / (n - first[1]) * 1e6,
                            now - read)
        time.sleep(FIRST_POLL_S if first is None else POLL_S)
    raise RuntimeError(f"{total} events not consumed{' and finished' if finished else ''} within "
                       f"{timeout:.0f} s (see {p.log})")


async def empty_outputs(bootstrap: str, prefix: str) -> None:
    """The topics a worker writes under `prefix` deleted and created again, empty: a new
    worker's read model reads its output topics from the start, so on topics an earlier run
    wrote to it would also read (and write to Redis) every decision of that run."""
    names = [prefix + t for t in WRITTEN]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        if gone := [n for n in names if n in existing]:
            await admin.delete_topics(gone)
    finally:
        await admin.close()
    await ensure_topics(bootstrap, names, PARTITIONS)


def throughput_pair(broker, redis, prefix: str, tmp: Path, i: int, events: int, records: int,
                    expected: int, a) -> dict:
    """The no-op agents, then the worker, on the backlog under `prefix` (`events` input events,
    `records` with the watermark records), each as a consumer group of its own (app id
    bench-<i>) and the worker with a Redis database of its own (a second worker writing the same
    decisions into the first one's would find them there, and do less). The worker is timed until
    it has read every event and sent `expected` decisions, as many as the backtest made."""
    app_id, db = f"bench-{i}", redis.url.rsplit("/", 1)[0] + f"/{i}"
    noop = noop_rate(env_for(broker, redis, prefix, tmp, UPSELL_APP_ID=app_id), tmp / f"noop-{i}.log",
                     records, a.timeout)
    log(f"pair {i + 1}: no-op Faust agents: {noop:,} events/s")
    w = WorkerProcess(env_for(broker, redis, prefix, tmp, UPSELL_APP_ID=app_id, UPSELL_REDIS_URL=db,
                              UPSELL_DATA_DIR=str(tmp / app_id)), tmp / f"worker-{i}.log")
    try:
        rate, cpu_us, waited = consume_rate(w, worker_events, events, a.timeout,
                                            finished=lambda p: p.decisions() >= expected)
        decisions = w.decisions()
    finally:
        w.stop()
    log(f"pair {i + 1}: upsell worker: {rate:,.0f} events/s, {decisions:,} decisions (the backtest: "
        f"{expected:,}), worker / no-op {rate / noop:.3f}")
    return {"noop_eps": noop, "worker_eps": round(rate), "backlog_cpu_us_per_event": round(cpu_us, 1),
            "worker_decisions": decisions,
            "worker_decided_after_read_s": round(waited, 2)}   # > 0: read alone would time it fast


def pair_summary(pairs: list[dict]) -> dict:
    """The throughput keys from the pairs (`throughput_pair`): each the median of the pairs', with
    the pairs' own in <key>_pairs; `ratio_noop` is the median of the pairs' own ratios, not the
    ratio of two medians: a pair's two phases run one straight after the other, while the two
    medians may come from different pairs, minutes apart."""
    res = {"ratio_noop_pairs": [round(p["worker_eps"] / p["noop_eps"], 3) for p in pairs]}
    res["ratio_noop"] = round(statistics.median(res["ratio_noop_pairs"]), 3)
    for key, digits in (("noop_eps", None), ("worker_eps", None), ("backlog_cpu_us_per_event", 1)):
        res[key + "_pairs"] = [p[key] for p in pairs]
        res[key] = round(statistics.median(res[key + "_pairs"]), digits)
    res["worker_decisions"] = [p["worker_decisions"] for p in pairs]
    res["worker_decided_after_read_s"] = max(p["worker_decided_after_read_s"] for p in pairs)
    return res


def noop_counted(p: WorkerProcess) -> dict:
    """bench/noop_app.py's /count: records counted and the seconds from the first to the latest
    (none before it listens)."""
    try:
        return orjson.loads(p.get("/count")[1])
    except OSError:          # not listening yet
        return {"events": 0, "seconds": None}


def noop_rate(env: dict, log_to: Path, total: int, timeout: float) -> int:
    """Events/s of bench/noop_app.py (started with `env`, stopped after) on the backlog, timed in
    its own process from the first record it counted to the last (its inbox variant drains the
    backlog faster than polls can time it)."""
    p = WorkerProcess(env, log_to, argv=[sys.executable, str(ROOT / "bench" / "noop_app.py"), "worker"])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p.alive()
            got = noop_counted(p)
            if got["events"] >= total:
                return round((got["events"] - 1) / max(got["seconds"], 1e-9))
            time.sleep(0.2)
        raise RuntimeError(f"{total} events not consumed within {timeout:.0f} s (see {p.log})")
    finally:
        p.stop()


# --------------------------------------------------------------------- phases --

async def raw_rate(bootstrap: str, prefix: str, total: int) -> float:
    consumer = AIOKafkaConsumer(*[prefix + t for t in INPUT_TOPICS], bootstrap_servers=bootstrap,
                                group_id=prefix + "raw", auto_offset_reset="earliest",
                                enable_auto_commit=False, max_poll_records=5000)
    await consumer.start()
    n, bad, first = 0, 0, None
    try:
        while n < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if first is None and batch:
                first = time.monotonic()
            for msgs in batch.values():
                for m in msgs:
                    try:
                        orjson.loads(m.value)
                    except orjson.JSONDecodeError:
                        bad += 1
                    n += 1
        return n / (time.monotonic() - first)
    finally:
        await consumer.stop()


def steady(w: WorkerProcess) -> bool:
    """The worker is past its start-up: it owns every partition and its stream time follows the
    wall clock (its batch-end timer has visited every partition), so it is not still reading a backlog."""
    try:
        h = orjson.loads(w.get("/health")[1])
    except OSError:
        return False
    times = h["stream_time"].values()
    now = time.time() * 1000
    return (len(h["assigned"]) == PARTITIONS and len(times) == PARTITIONS
            and all(t is not None and now - parse_ts(t) < 1000 for t in times))


async def latency(broker, redis, tmp: Path, events, rate: float, a, prefix: str = "bench-lat.",
                  argv: list[str] | None = None, **extra: str) -> dict:
    """A live worker (wall clock; `argv` and `extra` environment as `WorkerProcess` takes them)
    fed at `rate` events/s; each event is stamped with its produce time, so a decision's
    created_at is its input's produce time."""
    await ensure_topics(broker.bootstrap, [prefix + t for t in (*INPUT_TOPICS, *OUTPUTS)], PARTITIONS)
    lateness, tick, fetch_wait = a.lateness_ms, a.tick, a.fetch_max_wait_ms
    w = WorkerProcess(env_for(broker, redis, prefix, tmp, UPSELL_CLOCK="wall", UPSELL_LATENESS_MS=str(lateness),
                              UPSELL_TICK_INTERVAL=str(tick), UPSELL_FETCH_MAX_WAIT_MS=str(fetch_wait), **extra),
                      tmp / "latency-worker.log", argv=argv)
    lat: list[float] = []
    consumer = AIOKafkaConsumer(prefix + "proposals", prefix + "proposals.suppressed",
                                bootstrap_servers=broker.bootstrap, auto_offset_reset="latest",
                                fetch_max_wait_ms=10)   # the measuring consumer must not add latency
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    await consumer.start()
    await producer.start()
    try:
        while not steady(w):
            w.alive()
            await asyncio.sleep(0.1)     # another process's start-up: polled
        async with collecting(consumer, lat):
            idle = w.cpu_seconds()
            await asyncio.sleep(IDLE_S)      # measuring the idle worker's CPU over a wall-clock span
            idle = (w.cpu_seconds() - idle) / IDLE_S
            broker_cpu = asyncio.create_task(cpu_by_span(broker, a.latency_seconds, SPANS))
            cpu, main_cpu, began = w.cpu_seconds(), w.main_thread_cpu_seconds(), time.monotonic()
            n, start_ms = await pace(producer, prefix, events, rate, a.latency_seconds, a.pace_ms / 1000)
            cpu, main_cpu = w.cpu_seconds() - cpu, w.main_thread_cpu_seconds() - main_cpu
            took = time.monotonic() - began
    finally:
        await producer.stop()
        await consumer.stop()
        w.stop()
    every = sorted(ms for _, ms in lat)
    # without the first WARM_S of load: the worker's start-up stalls (bench/README, Latency)
    warm = sorted(ms for at, ms in lat if at >= start_ms + WARM_S * 1000)
    return {"p50_ms": _quantile(every, 0.50), "p99_ms": _quantile(every, 0.99),
            "p99_after_warmup_ms": _quantile(warm, 0.99), "latency_samples": len(every),
            "p99_ms_by_span": p99_by_span(lat, start_ms, a.latency_seconds),
            "broker_cores_by_span": await broker_cpu,
            "latency_rate_eps": round(rate), "latency_sent": n, "lateness_ms": lateness, "tick_s": tick,
            "fetch_max_wait_ms": fetch_wait, "pace_ms": a.pace_ms,
            "live_cpu_us_per_event": round(cpu / n * 1e6, 1), "idle_cores": round(idle, 3),
            "live_main_thread_cores": round(main_cpu / took, 3),
            # the two reads are a few µs apart and count in clock ticks: never below 0
            "live_other_threads_cores": round(max(0.0, cpu - main_cpu) / took, 3)}


@contextlib.asynccontextmanager
async def collecting(consumer, lat: list):
    """While the block runs, and for LAST_S seconds after it, `lat` gets (created_at, latency) in
    ms of each event-driven decision `consumer` gets, its latency from its created_at (its input's
    produce time) to its arrival here."""
    stop = asyncio.Event()
    task = asyncio.create_task(collect_decisions(consumer, lat, stop))
    try:
        yield
        await asyncio.sleep(LAST_S)      # a wall-clock span: what comes in it is measured
    finally:
        stop.set()
        await task


async def collect_decisions(consumer, lat: list, stop: asyncio.Event) -> None:
    """`collecting`'s task: until `stop` is set."""
    while not stop.is_set():
        batch = await consumer.getmany(timeout_ms=200)
        now = time.time() * 1000
        for msgs in batch.values():
            for m in msgs:
                p = orjson.loads(m.value)
                if p["trigger"] in EVENT_DRIVEN:
                    at = parse_ts(p["created_at"])
                    lat.append((at, now - at))


async def relay_latency(broker, events, rate: float, a, every: int, cpu_us: float = 0.0,
                        prefix: str = "bench-relay.") -> dict:
    """What the goal leaves a worker here: `bench/relay.py` in a process of its own, fed
    like the latency phase's worker, holding every `every`-th event for the lateness and sending
    a decision for it, and spending `cpu_us` of CPU on each event; produce time -> decision, as
    `latency` measures the worker's. Keys: relay_p50_ms, relay_p99_ms, relay_min_ms (the
    quickest decision), relay_samples (decisions), relay_sent (events), relay_cores (its CPU over
    the load) and relay_us_per_event."""
    await ensure_topics(broker.bootstrap, [prefix + t for t in (*INPUT_TOPICS, "proposals")], PARTITIONS)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=10)
    consumer.assign([TopicPartition(prefix + "proposals", p) for p in range(PARTITIONS)])
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    await consumer.start()
    await producer.start()
    lat: list[float] = []
    proc = None
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "bench" / "relay.py"), broker.bootstrap, prefix, "--partitions",
            str(PARTITIONS), "--lateness-ms", str(a.lateness_ms), "--fetch-max-wait-ms", str(a.fetch_max_wait_ms),
            "--every", str(every), "--cpu-us", str(cpu_us), stdout=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(proc.stdout.readline(), a.timeout)
        if line != b"ready\n":
            raise RuntimeError(f"bench/relay.py did not start (exit code {await proc.wait()})")
        await consumer.seek_to_end()      # positions fixed before the first event is sent
        async with collecting(consumer, lat):
            cpu, began = cpu_seconds(proc.pid), time.monotonic()
            n, _ = await pace(producer, prefix, events, rate, a.latency_seconds, a.pace_ms / 1000)
            cpu, took = cpu_seconds(proc.pid) - cpu, time.monotonic() - began
    finally:
        await producer.stop()
        await consumer.stop()
        if proc is not None:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
    every_ms = sorted(ms for _, ms in lat)
    return {"relay_p50_ms": _quantile(every_ms, 0.50), "relay_p99_ms": _quantile(every_ms, 0.99),
            "relay_min_ms": round(every_ms[0], 1) if every_ms else None, "relay_samples": len(every_ms),
            "relay_sent": n, "relay_cores": round(cpu / took, 3),
            "relay_us_per_event": round(cpu / n * 1e6, 1)}


async def pace(producer, prefix: str, events, rate: float, seconds: float, every: float) -> tuple[int, float]:
    """Sends `events` at `rate` for `seconds`, what is due every `every` seconds, each stamped with
    the time its round is built; returns the number sent and the wall-clock start in ms. `every`
    sets how many produce batches the broker stores, and tansu lists them all on each fetch
    (bench/README). Once all are sent it starts again with other customers (`c-1` becomes
    `c-1~1`, then `c-1~2`, in the key and the value), so the load goes on deciding like the first
    round: at 11,000 events/s the `--quick` stream lasts 4 s.

    Each round goes out as one record batch per topic-partition (aiokafka's `send_batch`, the
    key's partition as Kafka's default partitioner picks it), not a `send` per record: the
    generator shares the machine with what it measures, and per record it cost about four
    times as much CPU."""
    n, start, start_ms = 0, time.monotonic(), time.time() * 1000
    partition: dict[bytes, int] = {}
    while time.monotonic() - start < seconds:
        due = int((time.monotonic() - start) * rate)
        stamp, batches = int(time.time() * 1000), {}
        while n < due:
            rounds, i = divmod(n, len(events))
            e = events[i]
            key, value = e.key.encode() if e.key else None, e.raw
            if rounds and key:
                other = b"%s~%d" % (key, rounds)
                key, value = other, value.replace(b'"%s"' % e.key.encode(), b'"%s"' % other)
            p = n % PARTITIONS if key is None else partition.get(key)
            if p is None:
                p = partition[key] = partition_for(key.decode(), PARTITIONS)
            tp = (prefix + e.topic, p)
            batch = batches.get(tp)
            if batch is None:
                batch = batches[tp] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=stamp) is None:      # full: send it
                await producer.send_batch(batch, tp[0], partition=p)
                batch = batches[tp] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=stamp)
            n += 1
        for (topic, p), batch in batches.items():
            await producer.send_batch(batch, topic, partition=p)
        await asyncio.sleep(every)   # pacing the producer is the point here
    await producer.flush()
    return n, start_ms


async def raw_latency(broker, events, rate: float, a, prefix: str = "bench-rawlat.") -> dict:
    """The floor under `p99_ms`: the same events at the same rate through the same broker, read by
    a raw aiokafka consumer with the worker's fetch wait, produce time -> record in the consumer.
    No worker, no decision: what the broker and the client alone cost at this rate."""
    await ensure_topics(broker.bootstrap, [prefix + t for t in INPUT_TOPICS], PARTITIONS)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=prefix + "raw",
                                auto_offset_reset="latest", fetch_max_wait_ms=a.fetch_max_wait_ms)
    assigned = asyncio.Event()

    class Joined(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            pass

        def on_partitions_assigned(self, tps):
            if tps:
                assigned.set()

    consumer.subscribe([prefix + t for t in INPUT_TOPICS], listener=Joined())
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    await consumer.start()
    await producer.start()
    lat: list[float] = []
    sent = asyncio.get_running_loop().create_future()
    try:
        await asyncio.wait_for(assigned.wait(), a.timeout)
        await consumer.seek_to_end()      # positions fixed before the first record is sent

        async def collect():
            while not (sent.done() and len(lat) >= sent.result()):
                batch = await consumer.getmany(timeout_ms=200)
                now = time.time() * 1000
                lat.extend((m.timestamp, now - m.timestamp) for msgs in batch.values() for m in msgs)

        task = asyncio.create_task(collect())
        broker_cpu = asyncio.create_task(cpu_by_span(broker, a.latency_seconds, SPANS))
        n, start_ms = await pace(producer, prefix, events, rate, a.latency_seconds, a.pace_ms / 1000)
        sent.set_result(n)
        await asyncio.wait_for(task, a.timeout)
    finally:
        await producer.stop()
        await consumer.stop()
    every = sorted(ms for _, ms in lat)
    return {"raw_p50_ms": _quantile(every, 0.50), "raw_p99_ms": _quantile(every, 0.99),
            "raw_p99_ms_by_span": p99_by_span(lat, start_ms, a.latency_seconds),
            "raw_broker_cores_by_span": await broker_cpu}


async def noop_live_cores(broker, redis, tmp: Path, events, rate: float, a, prefix: str = "bench-noop-live.") -> dict:
    """The framework's share of a live worker: bench/noop_app.py on the inbox path (Faust's
    consumer, the worker's fetch wait and adaptations, each record only acknowledged) fed like the
    latency phase's worker at `rate` for a third of --latency-seconds; its CPU over that span, in
    cores. A first second of load, counted before the timing starts, shows it has joined and
    reads; it is stopped once it has read every event. Keys: noop_inbox_live_rate_eps,
    noop_inbox_live_cores, noop_inbox_live_sent (events, the first second's too)."""
    await ensure_topics(broker.bootstrap, [prefix + t for t in INPUT_TOPICS], PARTITIONS)
    p = WorkerProcess(env_for(broker, redis, prefix, tmp, NOOP_INBOX="1",
                              UPSELL_FETCH_MAX_WAIT_MS=str(a.fetch_max_wait_ms)),
                      tmp / "noop-live.log", argv=[sys.executable, str(ROOT / "bench" / "noop_app.py"), "worker"])
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    await producer.start()
    try:
        warm, _ = await pace(producer, prefix, events, rate, 1.0, a.pace_ms / 1000)

        async def read(k: int) -> None:      # another process's count: polled
            deadline = time.monotonic() + a.timeout
            while (got := noop_counted(p)["events"]) < k:
                p.alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bench/noop_app.py read {got} of {k} events within {a.timeout:.0f} s")
                await asyncio.sleep(0.1)
        await read(warm)       # its group joined and the first second read
        cpu, began = p.cpu_seconds(), time.monotonic()
        n, _ = await pace(producer, prefix, events, rate, a.latency_seconds / 3, a.pace_ms / 1000)
        cores = (p.cpu_seconds() - cpu) / (time.monotonic() - began)
        await read(warm + n)   # every event read: the CPU was that of an app that kept up
    finally:
        await producer.stop()
        p.stop()
    return {"noop_inbox_live_rate_eps": round(rate), "noop_inbox_live_cores": round(cores, 3),
            "noop_inbox_live_sent": warm + n}


def split_rate(tried: list[float], goal: float | None, fixed: float) -> float | None:
    """The rate of `tried` (half load first, then the ramp's) to read `live_cost` from with
    `fixed`: one the worker kept up with (at half load it falls behind, and CPU per event sent is
    then not what an event costs), so its goal rate, else the lowest of the rates up to it (the
    ramp's, without a goal rate); either at least 1.5 times apart from `fixed` (closer, the split
    is noise). None if no rate qualifies."""
    kept_up = [r for r in tried if r <= goal] if goal else tried[1:]
    apart = [r for r in kept_up if max(r, fixed) >= 1.5 * min(r, fixed)]
    return goal if goal in apart else min(apart) if apart else None


def live_cost(rate: float, us_per_event: float, other_rate: float, other_us_per_event: float) -> dict:
    """The live worker's CPU, read from two loads as a fixed part (cores, whatever the rate) and a
    part per event (µs): us_per_event = fixed / rate + per_event at both. Both loads must be
    rates the worker keeps up with: behind, the CPU per event sent is less than an event costs."""
    if rate == other_rate:
        return {"live_fixed_cores": None, "live_marginal_us_per_event": None}
    fixed = (us_per_event - other_us_per_event) / (1 / rate - 1 / other_rate)    # µs per second
    return {"live_fixed_cores": round(fixed / 1e6, 3),
            "live_marginal_us_per_event": round(us_per_event - fixed / rate, 1)}


def goal_rate(tried: list[list[float]], goal_ms: float = GOAL_P99_MS) -> float | None:
    """The highest rate of `tried` ([rate, p99 ms] pairs, a rate may be tried more than once) at
    which every p99 met `goal_ms`, or None."""
    missed = {rate for rate, p99 in tried if p99 > goal_ms}
    met = [rate for rate, p99 in tried if rate not in missed]
    return max(met) if met else None


async def interleaved_ramps(shares: list[float], steps: dict) -> None:
    """Down `shares`, each ramp of `steps` (name -> `async step(i, share, again) -> met`) runs at
    a share, once more if it met the goal, before the next ramp runs at that share. A ramp stops
    at the first share it meets twice in a row."""
    done: set = set()
    for i, share in enumerate(shares):
        for name, step in steps.items():
            if name not in done and await step(i, share, False) and await step(i, share, True):
                done.add(name)
        if len(done) == len(steps):
            return


def ramp_prefix(name: str, i: int, again: bool) -> str:
    """The topics' prefix of a ramp's step: its own topics, so no step reads another's records."""
    return f"bench-{name}-ramp-{i}{'-again' if again else ''}."


def ramp_shares(arg: str) -> list[float]:
    """--ramp "0.4,0.3,0.2": shares of worker_eps, highest first, each in (0, 0.5)."""
    shares = [float(x) for x in arg.split(",") if x.strip()]
    if any(not 0 < x < 0.5 for x in shares):
        raise argparse.ArgumentTypeError(f"ramp shares must lie between 0 and 0.5 (half load), got {arg!r}")
    return sorted(shares, reverse=True)


def p99_by_span(lat: list[tuple[float, float]], start_ms: float, seconds: float, spans: int = SPANS) -> list:
    """The p99 of the (produce time ms, latency ms) samples in each of `spans` equal spans of the
    load, by produce time (a sample stamped after the load's end counts in the last span)."""
    width = seconds * 1000 / spans
    parts: list[list[float]] = [[] for _ in range(spans)]
    for at, ms in lat:
        parts[min(spans - 1, max(0, int((at - start_ms) // width)))].append(ms)
    return [_quantile(sorted(p), 0.99) for p in parts]


async def cpu_by_span(service, seconds: float, spans: int) -> list[float]:
    """The CPU `service` (a process: `cpu_seconds()`) used in each of `spans` equal spans of the
    next `seconds`, in cores."""
    width, out, last = seconds / spans, [], service.cpu_seconds()
    for _ in range(spans):
        await asyncio.sleep(width)      # sampling a process's CPU counter at fixed times
        now = service.cpu_seconds()
        out.append(round((now - last) / width, 2))
        last = now
    return out


def _quantile(sorted_ms: list[float], f: float) -> float:
    return round(sorted_ms[min(len(sorted_ms) - 1, int(f * len(sorted_ms)))], 1) if sorted_ms else float("nan")


async def restored_rss(broker, prefix: str, env: dict, tmp: Path, a) -> float:
    """RSS of a second worker on the state phase's topics once it has restored every partition's
    customers from the changelog: a restart, or a take-over, of a worker holding them. Engines are
    rebuilt at a partition's first event, so one usage event goes to each partition."""
    w = WorkerProcess({**env, "UPSELL_WEB_PORT": str(free_port())}, tmp / "restored-worker.log")
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        first = {}
        for i in range(a.state_customers):
            first.setdefault(partition_for(state_cid(i), PARTITIONS), state_cid(i))
            if len(first) == PARTITIONS:
                break
        at = parse_ts("2025-06-01T00:02:00Z")      # after the state phase's events
        for p, cid in sorted(first.items()):
            await producer.send_and_wait(prefix + "usage", key=cid.encode(), partition=p, timestamp_ms=at,
                                         value=orjson.dumps({"customer_id": cid, "metric": "seats", "value": 11}))
        deadline = time.monotonic() + a.timeout
        while True:          # another process's progress: polled
            w.alive()
            try:
                engines = len(orjson.loads(w.get("/health")[1])["stream_time"])
            except OSError:
                engines = 0
            if engines == PARTITIONS:
                return round(w.rss_mb(), 1)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the restarted worker did not restore every partition (see {w.log})")
            await asyncio.sleep(0.2)
    finally:
        await producer.stop()
        w.stop()


def state_cid(i: int) -> str:
    return f"s-{i:06d}"


def state_lines(customers: int) -> list[bytes]:
    """Every customer once: a profile and a usage sample (the state a worker must hold)."""
    t0 = parse_ts("2025-06-01T00:00:00Z")
    out = []
    for i in range(customers):
        cid = state_cid(i)
        ts = t0 + i
        out.append(dumps({"topic": "customers", "key": cid, "timestamp": "2025-06-01T00:00:00Z",
                                 "value": {"customer_id": cid, "segment": "b2b" if i % 2 else "b2c",
                                           "plan": "basic", "signup_at": "2024-01-01T00:00:00Z"}}))
        out.append(dumps({"topic": "usage", "key": cid, "timestamp": "2025-06-01T00:01:00Z",
                                 "value": {"customer_id": cid, "metric": "seats", "value": 10 + ts % 30}}))
    return out


# ----------------------------------------------------------------------- main --

def simulate_rates(stream: Path, rules, runs: int) -> dict:
    """`upsell simulate` over the file, timed `runs` times (reading the file included), each run
    in one process followed by one in two (`--jobs 2`): simulate_eps is the one-process runs'
    median, simulate_eps_runs every such run's rate, simulate_jobs2_eps the two-process runs'
    median and simulate_jobs2_speedup the median of each pair's ratio (a slow spell of the
    machine lands on both runs of a pair, as in `ratio_noop`). One one-process result is kept at
    a time, as a lone `upsell simulate` holds one (bench/README.md: two alive slow the next run)."""
    rates, jobs_rates, result = [], [], None
    for _ in range(runs):
        result = None
        t = time.perf_counter()
        result = backtest_lines(stream.read_bytes().splitlines(), rules, PARTITIONS)
        rates.append(round((result.events + len(result.dead_letters)) / (time.perf_counter() - t)))
        t = time.perf_counter()
        two = backtest_lines(stream.read_bytes().splitlines(), rules, PARTITIONS, jobs=2)
        jobs_rates.append(round((two.events + len(two.dead_letters)) / (time.perf_counter() - t)))
        assert two.proposal_lines() == result.proposal_lines(), "--jobs 2 changed the proposals"
        two = None
    speedup = statistics.median(j / o for o, j in zip(rates, jobs_rates))
    stream_rates = []
    for _ in range(runs):      # `upsell simulate FILE`: read once, in order (streams/simulate.py)
        out = io.BytesIO()
        t = time.perf_counter()
        outcome = simulate(str(stream), rules, PARTITIONS, out, DEFAULT_MAX_AHEAD_MS)
        stream_rates.append(round((outcome.tally.events + outcome.tally.dead_letters) / (time.perf_counter() - t)))
        assert out.getvalue() == result.proposal_lines(), "the streaming backtest changed the proposals"
    return {"simulate_eps": round(statistics.median(rates)), "simulate_eps_runs": rates,
            "simulate_jobs2_eps": round(statistics.median(jobs_rates)), "simulate_jobs2_runs": jobs_rates,
            "simulate_jobs2_speedup": round(speedup, 3),
            "simulate_stream_eps": round(statistics.median(stream_rates)), "simulate_stream_eps_runs": stream_rates,
            "_result": result}


async def main(a) -> dict:
    rules = load_rules()
    tmp = Path(tempfile.mkdtemp(prefix="upsell-bench-"))
    log(f"generating {a.customers} customers x {a.days} days (seed 7) ...")
    lines = b"".join(generate(a.customers, a.days, 7, "2025-01-01", rules)).splitlines()
    stream = tmp / "stream.jsonl"
    stream.write_bytes(b"\n".join(lines) + b"\n")
    events, _ = load_sorted(lines)
    events = [e for e in events if e.topic in INPUT_TOPICS]
    total = len(events)
    res: dict = {"events": total, "customers": a.customers, "days": a.days, "partitions": PARTITIONS}

    res.update(simulate_rates(stream, rules, a.simulate_runs))
    result = res.pop("_result")
    log(f"simulate: {res['simulate_eps']:,} events/s (median of {res['simulate_eps_runs']}), "
        f"{len(result.proposals)} proposals; --jobs 2: {res['simulate_jobs2_eps']:,} events/s "
        f"({res['simulate_jobs2_speedup']}x); read once, in order: {res['simulate_stream_eps']:,} events/s")

    with EmbeddedBroker(log=tmp / "broker.log") as broker, EmbeddedRedis(log=tmp / "redis.log") as redis:
        prefix = "bench."
        log(f"producing {total:,} events to the embedded broker ...")
        await replay(lines, broker.bootstrap, PARTITIONS, prefix=prefix, progress=False)
        markers = len(INPUT_TOPICS) * PARTITIONS * (1 + total // 2000)

        res["raw_eps"] = round(await raw_rate(broker.bootstrap, prefix, total))
        log(f"raw aiokafka + orjson: {res['raw_eps']:,} events/s")

        res["noop_inbox_eps"] = noop_rate(env_for(broker, redis, prefix, tmp, NOOP_INBOX="1"),
                                          tmp / "noop-inbox.log", total + markers, a.timeout)
        log(f"no-op Faust app, records through an inbox: {res['noop_inbox_eps']:,} events/s")

        # the no-op agents and the worker in alternating pairs: `ratio_noop` is the median
        # of the pairs' ratios, so one slow spell of the machine during one phase does not set it
        expected = len(result.proposals) + len(result.suppressed)
        pairs = []
        for i in range(a.pairs):
            await empty_outputs(broker.bootstrap, prefix)
            pairs.append(throughput_pair(broker, redis, prefix, tmp, i, total, total + markers, expected, a))
        res.update(pair_summary(pairs))
        res["simulate_decisions"] = expected
        res["ratio_noop_inbox"] = round(res["worker_eps"] / res["noop_inbox_eps"], 3)
        res["ratio_raw"] = round(res["worker_eps"] / res["raw_eps"], 4)

        res.update(await raw_latency(broker, events, res["worker_eps"] / 2, a))
        log(f"raw aiokafka at {res['worker_eps'] / 2:,.0f} events/s: p50 {res['raw_p50_ms']} ms, "
            f"p99 {res['raw_p99_ms']} ms; p99 by third of the load {res['raw_p99_ms_by_span']} ms, "
            f"broker CPU {res['raw_broker_cores_by_span']} cores")
        res.update(await latency(broker, redis, tmp, events, res["worker_eps"] / 2, a))
        log(f"latency at {res['latency_rate_eps']:,} events/s: p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms "
            f"({res['p99_after_warmup_ms']} ms after the first {WARM_S} s) "
            f"({res['latency_samples']} decisions); p99 by third of the load {res['p99_ms_by_span']} ms, "
            f"broker CPU {res['broker_cores_by_span']} cores")
        # what the goal leaves any worker at this rate here: a relay that only does the
        # Kafka I/O and holds events for the lateness, deciding on as many events as the worker
        # did; then the same relay spending a worker's backlog CPU per event on each (less what
        # raw aiokafka spends per event on the backlog, which the relay spends itself)
        every = max(1, round(res["latency_sent"] / max(1, res["latency_samples"])))
        res["relay_every"] = every
        res.update(await relay_latency(broker, events, res["worker_eps"] / 2, a, every))
        spin = round(max(0.0, res["backlog_cpu_us_per_event"] - 1e6 / res["raw_eps"]), 1)
        busy = await relay_latency(broker, events, res["worker_eps"] / 2, a, every, spin, prefix="bench-relay-busy.")
        res.update({k.replace("relay_", "relay_backlog_cost_"): v for k, v in busy.items()})
        res["relay_backlog_cost_spin_us"] = spin
        log(f"relay at {res['latency_rate_eps']:,} events/s, no work: p50 {res['relay_p50_ms']} ms, p99 "
            f"{res['relay_p99_ms']} ms ({res['relay_cores']} cores); spending {spin} µs of CPU per event: p50 "
            f"{res['relay_backlog_cost_p50_ms']} ms, p99 {res['relay_backlog_cost_p99_ms']} ms "
            f"({res['relay_backlog_cost_cores']} cores)")
        # below half load, down the --ramp shares of worker_eps until p99 meets the goal: the
        # rate to size a live worker for on this machine, measured
        tried = [[res["latency_rate_eps"], res["p99_ms"]]]
        worker_cpu = {res["latency_rate_eps"]: [res["live_cpu_us_per_event"]]}     # rate -> µs per event

        # the relay spending a backlog event's CPU on each event, down the same shares: the rate a
        # worker whose live event cost what a backlog one does could meet the goal at here, so
        # that the worker's live capacity is a ratio within the run (goal_vs_relay)
        relay_tried = [[res["latency_rate_eps"], res["relay_backlog_cost_p99_ms"]]]
        relay_cores = {res["latency_rate_eps"]: [res["relay_backlog_cost_cores"]]}

        async def ramp_step(i: int, share: float, again: bool) -> bool:
            step = await latency(broker, redis, tmp, events, res["worker_eps"] * share, a,
                                 prefix=ramp_prefix("lat", i, again))
            tried.append([step["latency_rate_eps"], step["p99_ms"]])
            worker_cpu.setdefault(step["latency_rate_eps"], []).append(step["live_cpu_us_per_event"])
            log(f"ramp: latency at {step['latency_rate_eps']:,} events/s ({share:.0%} of the backlog rate"
                f"{', again' if again else ''}): p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms")
            return step["p99_ms"] <= GOAL_P99_MS

        async def relay_step(i: int, share: float, again: bool) -> bool:
            rate = round(res["worker_eps"] * share)
            step = await relay_latency(broker, events, rate, a, every, spin, prefix=ramp_prefix("relay", i, again))
            relay_tried.append([rate, step["relay_p99_ms"]])
            relay_cores.setdefault(rate, []).append(step["relay_cores"])
            log(f"relay ramp: {rate:,} events/s, {spin} µs per event: p99 {step['relay_p99_ms']} ms")
            return step["relay_p99_ms"] is not None and step["relay_p99_ms"] <= GOAL_P99_MS

        # one 15-s sample of p99 spreads widely at one rate: a rate counts once a second run at it
        # meets the goal too; a ramp runs only if its half-load run missed the goal
        steps = {}
        if res["p99_ms"] > GOAL_P99_MS:
            steps["worker"] = ramp_step
        if (res["relay_backlog_cost_p99_ms"] or 1e9) > GOAL_P99_MS:
            steps["relay"] = relay_step
        await interleaved_ramps(a.ramp, steps)
        res["ramp"] = tried
        res["goal_rate_eps"] = goal_rate(tried)
        res["goal_rate_share"] = res["goal_rate_eps"] and round(res["goal_rate_eps"] / res["worker_eps"], 3)
        res["relay_ramp"] = relay_tried
        res["relay_goal_rate_eps"] = goal_rate([t for t in relay_tried if t[1] is not None])
        res["goal_vs_relay"] = (round(res["goal_rate_eps"] / res["relay_goal_rate_eps"], 3)
                                if res["goal_rate_eps"] and res["relay_goal_rate_eps"] else None)
        if res["relay_goal_rate_eps"]:
            # what the goal of 0.8 leaves a worker: the relay's CPU at its goal rate, against what
            # the framework's path alone costs at 0.8 of that rate, before any rule runs
            res["relay_goal_cores"] = max(relay_cores[res["relay_goal_rate_eps"]])
            res.update(await noop_live_cores(broker, redis, tmp, events, 0.8 * res["relay_goal_rate_eps"], a))
            log(f"relay at its goal rate: {res['relay_goal_cores']} cores; the no-op app on the inbox path at "
                f"{res['noop_inbox_live_rate_eps']:,} events/s: {res['noop_inbox_live_cores']} cores")
        if a.fixed_rate:
            # the same at a rate that does not move with the backlog rate: comparable between runs
            # and code versions (half of a faster worker is more load on the same two cores)
            fixed = await raw_latency(broker, events, a.fixed_rate, a, prefix="bench-rawlat-fixed.")
            fixed.update(await latency(broker, redis, tmp, events, a.fixed_rate, a, prefix="bench-lat-fixed."))
            # the floor of a design with two hops and the lateness: the relay, no work, deciding
            # on as many events as this worker did
            fixed_every = max(1, round(fixed["latency_sent"] / max(1, fixed["latency_samples"])))
            floor = await relay_latency(broker, events, a.fixed_rate, a, fixed_every, prefix="bench-relay-fixed.")
            res.update({"fixed_rate_eps": a.fixed_rate, "fixed_p50_ms": fixed["p50_ms"],
                        "fixed_p99_ms": fixed["p99_ms"], "fixed_raw_p99_ms": fixed["raw_p99_ms"],
                        "fixed_relay_p99_ms": floor["relay_p99_ms"], "fixed_relay_cores": floor["relay_cores"],
                        "fixed_live_cpu_us_per_event": fixed["live_cpu_us_per_event"],
                        "fixed_live_cores": round(fixed["live_cpu_us_per_event"] * a.fixed_rate / 1e6, 3)})
            kept_up = split_rate(list(worker_cpu), res["goal_rate_eps"], a.fixed_rate)
            if kept_up:
                res.update(live_cost(kept_up, statistics.median(worker_cpu[kept_up]),
                                     a.fixed_rate, fixed["live_cpu_us_per_event"]))
                res["live_cost_rates_eps"] = [kept_up, a.fixed_rate]
            log(f"latency at {a.fixed_rate:,} events/s: p50 {res['fixed_p50_ms']} ms, p99 {res['fixed_p99_ms']} ms "
                f"(raw aiokafka p99 {res['fixed_raw_p99_ms']} ms, the relay with no work {res['fixed_relay_p99_ms']} ms); "
                f"the worker {res['fixed_live_cores']} cores, the relay {res['fixed_relay_cores']}")

        sizes = [len(orjson.dumps(c)) for eng in result.engines.values() for c in eng.customers.values()]
        res["state_bytes_per_customer"] = round(statistics.mean(sizes))
        res["state_bytes_p99"] = sorted(sizes)[int(0.99 * len(sizes))]

        prefix = "bench-state."
        slines = state_lines(a.state_customers)
        await replay(slines, broker.bootstrap, PARTITIONS, prefix=prefix, progress=False)
        env = env_for(broker, redis, prefix, tmp)
        w = WorkerProcess(env, tmp / "state-worker.log")
        try:
            consume_rate(w, worker_events, len(slines), a.timeout)
            res["rss_mb_100k"] = round(w.rss_mb(), 1)
            res["state_customers"] = a.state_customers
        finally:
            w.stop()
        log(f"worker RSS with {a.state_customers:,} customers: {res['rss_mb_100k']} MB")
        res["rss_mb_100k_restored"] = await restored_rss(broker, prefix, env, tmp, a)
        log(f"worker RSS after a restart with them: {res['rss_mb_100k_restored']} MB")
    res["logs"] = str(tmp)
    return res


def table(res: dict) -> str:
    rows = [("raw_eps", "raw aiokafka + orjson, events/s"), ("noop_eps", "no-op Faust agents, events/s"),
            ("noop_inbox_eps", "no-op Faust app, inbox path, events/s"),
            ("worker_eps", "upsell worker, events/s"), ("ratio_noop", "worker / no-op  (goal >= 0.8)"),
            ("ratio_noop_pairs", "worker / no-op, each pair"),
            ("ratio_noop_inbox", "worker / no-op on the inbox path"),
            ("ratio_raw", "worker / raw"),
            ("worker_decisions", "worker's decisions on the backlog"),
            ("worker_decided_after_read_s", "its last decision after its last read, s (by polls)"),
            ("simulate_decisions", "the backtest's decisions, same file"),
            ("backlog_cpu_us_per_event", "worker CPU per event on the backlog, µs"),
            ("live_cpu_us_per_event", "worker CPU per event live at half load, µs"),
            ("fixed_live_cpu_us_per_event",
             f"worker CPU per event live at {res.get('fixed_rate_eps', 0):,} events/s, µs"),
            ("idle_cores", "live worker's CPU before the load, cores"),
            ("live_fixed_cores", "live worker's CPU, fixed part, cores"),
            ("live_marginal_us_per_event", "live worker's CPU, part per event, µs"),
            ("live_cost_rates_eps", "the two rates that split is read from, events/s"),
            ("live_main_thread_cores", "live worker's main thread at half load, cores"),
            ("live_other_threads_cores", "its other threads, cores"),
            ("p50_ms", "latency p50, ms (half load)"),
            ("p99_ms", "latency p99, ms (goal <= 100)"),
            ("p99_after_warmup_ms", f"latency p99 after the first {WARM_S} s, ms"),
            ("p99_ms_by_span", "latency p99 by third of the load, ms"),
            ("broker_cores_by_span", "broker CPU by third of the load, cores"),
            ("raw_p99_ms", "raw aiokafka p99 at that rate, ms (the floor)"),
            ("raw_p99_ms_by_span", "raw aiokafka p99 by third of the load, ms"),
            ("raw_broker_cores_by_span", "broker CPU then, by third, cores"),
            ("relay_p99_ms", "relay, no work, p99 at half load, ms"),
            ("relay_cores", "its CPU, cores"),
            ("relay_backlog_cost_spin_us", "relay's CPU spent per event, µs"),
            ("relay_backlog_cost_p99_ms", "that relay's p99 at half load, ms"),
            ("relay_backlog_cost_cores", "its CPU, cores"),
            ("ramp", "[rate, p99 ms] at half load, then down the ramp"),
            ("goal_rate_eps", "highest of those rates with p99 <= 100 ms"),
            ("goal_rate_share", "it / the worker's backlog rate"),
            ("relay_goal_rate_eps", "highest rate the relay at a backlog event's CPU met p99 <= 100 ms"),
            ("goal_vs_relay", "goal_rate_eps / relay_goal_rate_eps (goal >= 0.8)"),
            ("relay_goal_cores", "the relay's CPU at its goal rate, cores"),
            ("noop_inbox_live_cores",
             f"no-op app, inbox path, live at {res.get('noop_inbox_live_rate_eps') or 0:,} events/s, cores"),
            ("fixed_p99_ms", f"latency p99 at {res.get('fixed_rate_eps', 0):,} events/s, ms"),
            ("fixed_raw_p99_ms", "raw aiokafka p99 at that rate, ms"),
            ("fixed_relay_p99_ms", "the relay with no work, p99 at that rate, ms"),
            ("fixed_live_cores", "the worker's CPU at that rate, cores"),
            ("fixed_relay_cores", "the relay's, cores"),
            ("simulate_eps", "backtest, events/s, median (goal >= 50k)"),
            ("simulate_eps_runs", "backtest, each run's events/s"),
            ("simulate_jobs2_eps", "backtest in two processes, events/s (median)"),
            ("simulate_jobs2_speedup", "it / the one-process rate, median of pairs (goal >= 1.6)"),
            ("simulate_stream_eps", "backtest read once, in order (upsell simulate FILE), events/s"),
            ("state_bytes_per_customer", "state per customer, bytes (mean)"),
            ("rss_mb_100k", f"worker RSS with {res.get('state_customers', 0):,} customers, MB"),
            ("rss_mb_100k_restored", "the same customers restored by a new worker, RSS MB")]
    w = max(len(label) for _, label in rows)
    return "\n".join(f"{label:<{w}}  {res.get(key)!s:>12}" for key, label in rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller stream: under 10 minutes on 2 cores")
    ap.add_argument("--customers", type=int)
    ap.add_argument("--days", type=int)
    ap.add_argument("--state-customers", type=int, default=100_000)
    ap.add_argument("--latency-seconds", type=float)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--pairs", type=int, default=3,
                    help="alternating runs of the no-op agents and the worker on the backlog")
    ap.add_argument("--lateness-ms", type=int, default=20, help="latency phase: UPSELL_LATENESS_MS")
    ap.add_argument("--tick", type=float, default=0.02, help="latency phase: UPSELL_TICK_INTERVAL, s")
    ap.add_argument("--fixed-rate", type=int, default=3000,
                    help="latency phases again at this rate, events/s (0: not run)")
    ap.add_argument("--fetch-max-wait-ms", type=int, default=10,
                    help="latency phase: UPSELL_FETCH_MAX_WAIT_MS (tansu holds an empty fetch this long)")
    ap.add_argument("--ramp", type=ramp_shares, default="0.25,0.2,0.15,0.1",
                    help="if p99 at half load misses 100 ms, latency again at these shares of worker_eps, "
                         "highest first, until one meets it in two runs in a row ('' for none)")
    ap.add_argument("--simulate-runs", type=int, default=3,
                    help="the backtest is timed this many times; simulate_eps is the median")
    ap.add_argument("--pace-ms", type=int, default=20,
                    help="latency phases: the load generator sends what is due every this many ms (5 before run L1)")
    a = ap.parse_args()
    a.customers = a.customers or (1000 if a.quick else 2000)
    a.days = a.days or (30 if a.quick else 90)
    a.latency_seconds = a.latency_seconds or (15 if a.quick else 60)
    started = time.monotonic()
    res = asyncio.run(main(a))
    res["bench_seconds"] = round(time.monotonic() - started)
    print(table(res))
    print(orjson.dumps(res).decode())
