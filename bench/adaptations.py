"""Each adaptation of streams/transport.py against the framework's own behaviour, in one run.

    python bench/adaptations.py [--rounds 3] [--latency-rounds 2] [--only A,B]

The stream of `bench/run.py --quick` (1,000 customers x 30 days, 8 partitions) is produced once
to an embedded broker. Each round runs the worker on that backlog with every adaptation on
(`all`) and with each one off (`bench/without.py`), in an order that turns every round, each run
a consumer group of its own and an emptied Redis database: worker_eps and the CPU per event
(`bench/run.py`'s `consume_rate`). The adaptations aimed at latency then run the fixed-rate
latency phase (3,000 events/s, wall clock) the same way: p50 and p99.

A figure per adaptation is the median over rounds of its run against the `all` run of the same
round: eps_ratio (off / on: below 1, the adaptation gains throughput), cpu_ratio and p99_ratio
(off / on: above 1, it saves CPU or tail). The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import inspect
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
import redis  # noqa: E402

from bench import run  # noqa: E402
from bench.without import WITHOUT  # noqa: E402
from rules.config import load_rules  # noqa: E402
from rules.engine import INPUT_TOPICS  # noqa: E402
from streams.backtest import backtest_lines  # noqa: E402
from streams.embedded import EmbeddedBroker, EmbeddedRedis, WorkerProcess  # noqa: E402
from streams.generate import generate  # noqa: E402
from streams.recorded import load_sorted  # noqa: E402
from streams.replay import replay  # noqa: E402

LAUNCHER = [sys.executable, str(ROOT / "bench" / "without.py"), "worker"]
# the adaptations whose reason is the latency tail, not the backlog's CPU
FOR_LATENCY = ("FetchWait", "ConsumerOnAppLoop", "PausedInTheClient", "freeze_startup_heap", "full_collections",
               "WorkerWithoutSpinner")


async def backlog(broker, store, prefix: str, tmp: Path, name: str, tag: str, events: int, expected: int,
                  timeout: float) -> dict:
    """The worker (`name` off, or `all` on) through the backlog under `prefix`, its output topics
    emptied first (`run.empty_outputs`)."""
    redis.Redis.from_url(store.url).flushdb()       # decisions found there would be skipped
    await run.empty_outputs(broker.bootstrap, prefix)
    app_id = f"abl-{tag}"
    env = run.env_for(broker, store, prefix, tmp, UPSELL_APP_ID=app_id, UPSELL_DATA_DIR=str(tmp / app_id),
                      BENCH_WITHOUT="" if name == "all" else name)
    w = WorkerProcess(env, tmp / f"{app_id}.log", argv=LAUNCHER)
    try:
        eps, cpu_us, _ = run.consume_rate(w, run.worker_events, events, timeout,
                                          finished=lambda p: p.decisions() >= expected)
    finally:
        w.stop()
    return {"eps": round(eps), "cpu_us": round(cpu_us, 1)}


def turned(names: list[str], i: int) -> list[str]:
    """The round's order: the list turned by `i`, so no name always runs first or last."""
    k = i % len(names)
    return names[k:] + names[:k]


async def in_rounds(names: list[str], count: int, run_one, said) -> list[dict]:
    """`count` rounds, each running `run_one(name, round)` (a result, or one to await) with every
    adaptation on ("all") and with each of `names` off, in an order that turns; logs `said(result)`."""
    rounds = []
    for i in range(count):
        got = {}
        for name in turned(["all", *names], i):
            result = run_one(name, i)
            got[name] = await result if inspect.isawaitable(result) else result
            run.log(f"round {i + 1}: without {name}: {said(got[name])}")
        rounds.append(got)
    return rounds


def ratios(runs: list[dict], key: str, names: list[str]) -> dict:
    """Per name, the median over rounds of its `key` against the `all` run of its round."""
    return {n: round(statistics.median(r[n][key] / r["all"][key] for r in runs), 3) for n in names}


async def main(a) -> dict:
    names = a.only.split(",") if a.only else list(WITHOUT)
    unknown = sorted({part for n in names for part in n.split("+")} - set(WITHOUT))
    if unknown:
        raise SystemExit(f"bench/adaptations.py: unknown adaptation(s) {', '.join(unknown)}; "
                         f"known: {', '.join(WITHOUT)}")
    rules = load_rules()
    tmp = Path(tempfile.mkdtemp(prefix="upsell-abl-"))
    lines = b"".join(generate(1000, 30, 7, "2025-01-01", rules)).splitlines()
    events, _ = load_sorted(lines)
    events = [e for e in events if e.topic in INPUT_TOPICS]
    result = backtest_lines(lines, rules, partitions=run.PARTITIONS)
    expected = len(result.proposals) + len(result.suppressed)
    res: dict = {"events": len(events), "decisions": expected, "rounds": a.rounds,
                 "latency_rounds": a.latency_rounds, "fixed_rate_eps": a.fixed_rate}
    with EmbeddedBroker(log=tmp / "broker.log") as broker, EmbeddedRedis(log=tmp / "redis.log") as store:
        prefix = "abl."
        await replay(lines, broker.bootstrap, run.PARTITIONS, prefix=prefix, progress=False)
        rounds = await in_rounds(names, a.rounds, lambda name, i: backlog(
            broker, store, prefix, tmp, name, f"{name}-{i}", len(events), expected, a.timeout),
            lambda got: f"{got['eps']:,} events/s, {got['cpu_us']} µs per event")
        if rounds:
            res["backlog_runs"] = rounds
            res["eps_ratio"] = ratios(rounds, "eps", names)
            res["cpu_ratio"] = ratios(rounds, "cpu_us", names)

        lat_names = [n for n in names if any(part in FOR_LATENCY for part in n.split("+"))]
        opts = argparse.Namespace(lateness_ms=20, tick=0.02, fetch_max_wait_ms=10, pace_ms=20,
                                  latency_seconds=a.latency_seconds)

        async def live(name: str, i: int) -> dict:
            out = await run.latency(broker, store, tmp, events, a.fixed_rate, opts, prefix=f"abl-lat-{name}-{i}.",
                                    argv=LAUNCHER, BENCH_WITHOUT="" if name == "all" else name)
            return {"p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"], "live_cpu_us": out["live_cpu_us_per_event"]}
        lat_rounds = await in_rounds(lat_names, a.latency_rounds if lat_names else 0, live,
                                     lambda got: f"p50 {got['p50_ms']} ms, p99 {got['p99_ms']} ms, "
                                                 f"{got['live_cpu_us']} µs per event")
        if lat_rounds:
            res["latency_runs"] = lat_rounds
            res["p99_ratio"] = ratios(lat_rounds, "p99_ms", lat_names)
            res["live_cpu_ratio"] = ratios(lat_rounds, "live_cpu_us", lat_names)
    res["logs"] = str(tmp)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="backlog rounds (every adaptation off once each)")
    ap.add_argument("--latency-rounds", type=int, default=2, help="fixed-rate latency rounds")
    ap.add_argument("--latency-seconds", type=float, default=10, help="load per latency run, s")
    ap.add_argument("--fixed-rate", type=int, default=3000, help="latency runs' rate, events/s")
    ap.add_argument("--only", help="a comma-separated list of adaptations (default: all); a+b turns two off at once")
    ap.add_argument("--timeout", type=float, default=300)
    res = asyncio.run(main(ap.parse_args()))
    for key in ("eps_ratio", "cpu_ratio", "p99_ratio", "live_cpu_ratio"):
        if key in res:
            run.log(f"{key}: {res[key]}")
    print(orjson.dumps(res).decode())
