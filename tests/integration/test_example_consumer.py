"""examples/notification_service.py against a live worker on the real broker: every proposal is
handled once though one is delivered twice, none is sent after its end, and each answer it writes
back is a valid `proposal-outcomes` record on the customer's partition."""
from __future__ import annotations

import asyncio
import importlib.util
import io
import sys
from pathlib import Path

import orjson
import pytest

from rules.config import load_rules
from rules.timeutil import parse_ts
from schemas.validate import validate
from streams.backtest import backtest_lines
from streams.partitioning import partition_for
from streams.replay import replay
from tests.integration.conftest import PARTITIONS, consume, loads, produce

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "tests" / "scenarios" / "saas_and_shop.jsonl"


def _example():
    spec = importlib.util.spec_from_file_location("notification_service", ROOT / "examples" / "notification_service.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


async def test_the_example_notification_service(broker, start_worker):
    ns = _example()
    lines = SCENARIO.read_bytes().splitlines()
    expected = backtest_lines(lines, load_rules(), PARTITIONS).proposals
    assert expected
    prefix = start_worker.prefix
    worker = start_worker()
    await asyncio.to_thread(worker.wait_healthy)
    await replay(lines, broker.bootstrap, PARTITIONS, prefix=prefix, progress=False)
    got = await consume(broker.bootstrap, prefix + "proposals", len(expected))
    again = got[0]       # at least once on the wire: the same proposal a second time
    await produce(broker.bootstrap, [(prefix + "proposals", again.key, again.value, again.timestamp)])

    out, stop = io.StringIO(), asyncio.Event()
    now = max(parse_ts(p["valid_until"]) for p in expected) + ns.DAY     # everything has come due
    task = asyncio.create_task(ns.run(broker.bootstrap, prefix, group=prefix + "notifier", clock=lambda: now,
                                      out=out, stop=stop))

    async def handled():
        while len([ln for ln in out.getvalue().splitlines() if ln.startswith(("sent ", "dropped "))]) < len(expected):
            assert not task.done(), task
            await asyncio.sleep(0.1)     # the consumer's progress, in its own task: polled
    await asyncio.wait_for(handled(), 90)
    stop.set()
    await asyncio.wait_for(task, 30)

    handled_lines = [ln for ln in out.getvalue().splitlines() if ln.startswith(("sent ", "dropped "))]
    ids = [ln.split()[1].rstrip(":") for ln in handled_lines]
    assert sorted(ids) == sorted(p["proposal_id"] for p in expected)        # each once, the duplicate too
    by_id = {p["proposal_id"]: p for p in expected}
    sent = [i for ln, i in zip(handled_lines, ids) if ln.startswith("sent ")]
    for i in ids:
        p = by_id[i]
        on_time = ns.send_time(parse_ts(p["created_at"]), (22, 8)) < parse_ts(p["valid_until"])
        assert (i in sent) == on_time, p
    assert sent

    def answers(records):
        return {orjson.loads(r.value)["proposal_id"]: r for r in records
                if r.value and orjson.loads(r.value).get("proposal_id") in by_id}
    outcomes = await consume(broker.bootstrap, prefix + "proposal-outcomes", len(sent),
                             until=lambda rs: len(answers(rs)) >= len(sent))
    written = answers(outcomes)
    assert sorted(written) == sorted(sent)
    for i, r in written.items():
        p = by_id[i]
        value = validate("proposal-outcomes", orjson.loads(r.value), r.key.decode())
        assert value["outcome"] == ns.answer(i)
        assert r.partition == partition_for(p["customer_id"], PARTITIONS)        # co-partitioned by key
        assert r.timestamp == ns.send_time(parse_ts(p["created_at"]), (22, 8))  # stamped in event time
    assert loads([again])[0]["proposal_id"] in ids
