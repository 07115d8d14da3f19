"""examples/notification_service.py against a live worker on the real broker: every proposal is
handled once though one is delivered twice, none is sent after its end or once withdrawn, and each
answer it writes back is a valid `proposal-outcomes` record on the customer's partition."""
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
    result = backtest_lines(lines, load_rules(), PARTITIONS)
    expected = result.proposals
    cancelled = {r["proposal_id"] for r in result.statuses if r["status"] in ("withdrawn", "converted")}
    assert expected and cancelled
    prefix = start_worker.prefix
    worker = start_worker()
    await asyncio.to_thread(worker.wait_healthy)
    await replay(lines, broker.bootstrap, PARTITIONS, prefix=prefix, progress=False)
    got = await consume(broker.bootstrap, prefix + "proposals", len(expected))
    again = got[0]       # at least once on the wire: the same proposal a second time
    await produce(broker.bootstrap, [(prefix + "proposals", again.key, again.value, again.timestamp)])

    out, stop, box = io.StringIO(), asyncio.Event(), ns.Outbox((22, 8))
    clock = [0]                  # before every send time: nothing is sent until both topics are read
    task = asyncio.create_task(ns.run(broker.bootstrap, prefix, group=prefix + "notifier", clock=lambda: clock[0],
                                      out=out, stop=stop, box=box))

    async def read_all():
        while len(box.seen) < len(expected) or box.statuses < len(result.statuses):
            assert not task.done(), task
            await asyncio.sleep(0.1)     # the consumer's progress, in its own task: polled
    await asyncio.wait_for(read_all(), 90)
    clock[0] = max(parse_ts(p["valid_until"]) for p in expected) + ns.DAY     # everything has come due

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
        assert (i in sent) == (on_time and i not in cancelled), p
    assert sent and any(f"dropped {i}: withdrawn" in out.getvalue() for i in cancelled)

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
