"""A backtest bigger than one machine, at small scale: the recording replayed into Kafka, two
workers on the event clock sharing the partitions; their proposals are `upsell simulate`'s, in
one process (read once, in order) and in two (`--jobs 2`), byte for byte once in the documented
order."""
from __future__ import annotations

import asyncio
import io

import orjson
import pytest

from rules.config import load_rules
from streams.backtest import _order, backtest_lines
from streams.generate import generate
from streams.replay import replay
from streams.simulate import simulate
from tests.integration.conftest import PARTITIONS, consume, loads

pytestmark = pytest.mark.integration


async def test_workers_sharing_a_replay_give_the_backtest_s_bytes(broker, start_worker, tmp_path):
    lines = b"".join(generate(customers=60, days=45, seed=21, start="2025-02-01")).splitlines()
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    streamed = io.BytesIO()
    outcome = simulate(str(path), load_rules(), PARTITIONS, streamed, 86_400_000)
    assert outcome.loaded_whole is None
    jobs = backtest_lines(lines, load_rules(), PARTITIONS, jobs=2).proposal_lines()
    assert streamed.getvalue() == jobs and jobs

    prefix = start_worker.prefix
    await replay([], broker.bootstrap, PARTITIONS, prefix=prefix, progress=False)      # the topics
    workers = [start_worker("w1"), start_worker("w2")]
    for w in workers:
        await asyncio.to_thread(w.wait_healthy)
    for _ in range(300):         # the group settles with partitions on both (another process's view)
        shares = [orjson.loads((await asyncio.to_thread(w.get, "/health"))[1])["assigned"] for w in workers]
        if all(shares) and sorted(shares[0] + shares[1]) == list(range(PARTITIONS)):
            break
        await asyncio.sleep(0.1)
    assert all(shares) and sorted(shares[0] + shares[1]) == list(range(PARTITIONS)), shares
    await replay(lines, broker.bootstrap, PARTITIONS, prefix=prefix, progress=False)
    want = jobs.splitlines()
    got = loads(await consume(broker.bootstrap, prefix + "proposals", len(want)))
    live = b"".join(orjson.dumps(p) + b"\n" for p in sorted(got, key=_order))
    assert live == jobs
