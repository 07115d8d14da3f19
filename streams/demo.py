"""`upsell demo`: embedded broker + Redis + a worker, a recording replayed, proposals live.

Uses UPSELL_BROKER / UPSELL_REDIS_URL when set; otherwise starts the embedded ones on free
loopback ports. The partition count is UPSELL_PARTITIONS (8 unless set), as for every command.
Everything it started is stopped on exit (and with `keep`, on Ctrl-C or SIGTERM), and its
folder of logs is removed unless the demo failed.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from streams.backtest import backtest_lines
from streams.embedded import WorkerProcess, free_port
from streams.kafka import bootstrap_of
from streams.replay import replay
from streams.tail import pretty


async def _live(bootstrap: str, file: Path, partitions: int, expected: int, timeout: float) -> Counter:
    consumer = AIOKafkaConsumer("proposals", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    seen: Counter = Counter()
    try:
        sending = asyncio.create_task(replay(file.read_bytes().splitlines(), bootstrap, partitions,
                                             progress=False))
        deadline = time.monotonic() + timeout
        while sum(seen.values()) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    p = orjson.loads(m.value)
                    seen[(p["trigger"], p["kind"])] += 1
                    print(pretty(p, partition=m.partition), flush=True)
        await sending
    finally:
        await consumer.stop()
    return seen


def command() -> str:
    """How to call the command line from this shell: `upsell` if it is on PATH."""
    return "upsell" if shutil.which("upsell") else f"{os.path.relpath(sys.executable)} -m streams.cli"


def demo(file: Path, keep: bool = False, embedded=None) -> None:
    """`embedded`: the streams.embedded module when the broker or Redis is to be started here."""
    from streams.cli import _rules, fail
    from streams.settings import SettingsError, env_partitions
    rules = _rules(os.environ.get("UPSELL_RULES"))
    try:
        partitions = env_partitions()
    except SettingsError as exc:
        fail(str(exc))
    tmp = Path(tempfile.mkdtemp(prefix="upsell-demo-"))
    ok = False
    try:
        with ExitStack() as stack:
            broker_url = os.environ.get("UPSELL_BROKER")
            redis_url = os.environ.get("UPSELL_REDIS_URL")
            try:
                if not broker_url:
                    broker_url = stack.enter_context(embedded.EmbeddedBroker(log=tmp / "broker.log")).url
                    print(f"started the embedded broker (tansu) at {broker_url}")
                if not redis_url:
                    redis_url = stack.enter_context(embedded.EmbeddedRedis(log=tmp / "redis.log")).url
                    print(f"started Redis at {redis_url}")
            except RuntimeError as exc:
                fail(str(exc))
            web_port = free_port()
            env = {"UPSELL_BROKER": broker_url, "UPSELL_REDIS_URL": redis_url, "UPSELL_CLOCK": "event",
                   "UPSELL_PARTITIONS": str(partitions), "UPSELL_WEB_PORT": str(web_port),
                   "UPSELL_SESSION_TIMEOUT": "6", "UPSELL_DATA_DIR": str(tmp / "data"),
                   "UPSELL_APP_ID": f"upsell-demo-{os.getpid()}"}
            expected = backtest_lines(file.read_bytes().splitlines(), rules, partitions)
            worker = WorkerProcess(env, tmp / "worker.log")
            stack.callback(worker.stop, 15)
            print(f"worker starting, {partitions} partitions ...")
            try:
                worker.wait_healthy()
            except RuntimeError as exc:      # it exited, or is not ready in time: its log says why
                fail(f"the worker did not become ready ({str(exc).splitlines()[0][:120]}); "
                     f"its log: {tmp / 'worker.log'}")
            print(f"replaying {file.name}: proposals as they arrive, pN their partition\n"
                  f"(each partition is in event-time order; times go back between partitions)\n")
            seen = asyncio.run(_live(bootstrap_of(broker_url), file, partitions, len(expected.proposals), 120))
            want = Counter((p["trigger"], p["kind"]) for p in expected.proposals)
            print(f"\n{'trigger':<16} {'kind':<11} {'live':>5} {'backtest':>9}")
            for key in sorted(want | seen):
                print(f"{key[0]:<16} {key[1]:<11} {seen[key]:>5} {want[key]:>9}")
            same = "the same as" if seen == want else "DIFFERENT from"
            print(f"\n{sum(seen.values())} proposals live, {same} `upsell simulate` on the same file; "
                  f"{len(expected.suppressed)} suppressed, {len(expected.dead_letters)} dead letters.")
            print(f"{len(expected.statuses)} lifecycle records on proposal-status (converted, declined, expired, "
                  f"withdrawn);\n`upsell simulate FILE` measures conversions and uplift.")
            ok = seen == want
            if not keep:
                print("\n`upsell demo --keep` keeps the broker, Redis and the worker running to look around.")
                return
            cid = expected.proposals[0]["customer_id"] if expected.proposals else "c-00000"
            print(f"\nrunning until Ctrl-C; meanwhile, in another shell:\n"
                  f"  curl http://127.0.0.1:{web_port}/customers/{cid}\n"
                  f"  curl http://127.0.0.1:{web_port}/metrics\n"
                  f"  export UPSELL_BROKER={broker_url} UPSELL_PARTITIONS={partitions}\n"
                  f"  {command()} tail --from-beginning\n"
                  f"  {command()} tail --status --from-beginning",
                  flush=True)
            worker.proc.wait()
    finally:
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"the demo's logs: {tmp}", file=sys.stderr)
