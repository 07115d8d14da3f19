"""An offer test and a holdout group run live as in the backtest: the worker, given the rules
file, sends the same proposals (variants included) and records the same holdout suppressions."""
from __future__ import annotations

import asyncio

import pytest

from rules.config import default_rules_text, load_rules
from streams.backtest import backtest_lines
from streams.generate import generate
from streams.replay import replay
from tests.integration.conftest import PARTITIONS, consume, loads
from tests.test_experiments import EXPERIMENT

pytestmark = pytest.mark.integration


async def test_variants_and_holdout_live_equal_the_backtest(broker, start_worker, tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(default_rules_text().replace("[holdout]\nshare = 0.0", "[holdout]\nshare = 0.2") + EXPERIMENT)
    rules = load_rules(path)
    lines = b"".join(generate(customers=80, days=60, seed=12, start="2025-01-01", rules=rules)).splitlines()
    expected = backtest_lines(lines, rules, PARTITIONS)
    assert any("variant" in p for p in expected.proposals)
    assert any(s["suppressed"]["reason"] == "holdout" for s in expected.suppressed)
    worker = start_worker(UPSELL_RULES=str(path))
    await asyncio.to_thread(worker.wait_healthy)
    await replay(lines, broker.bootstrap, PARTITIONS, prefix=start_worker.prefix, progress=False)
    got = loads(await consume(broker.bootstrap, start_worker.prefix + "proposals", len(expected.proposals)))
    key = lambda p: p["proposal_id"]      # noqa: E731
    assert sorted(got, key=key) == sorted(expected.proposals, key=key)
    sup = loads(await consume(broker.bootstrap, start_worker.prefix + "proposals.suppressed", len(expected.suppressed)))
    assert sorted(sup, key=key) == sorted(expected.suppressed, key=key)
