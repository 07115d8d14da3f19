"""Golden scenarios: a recorded stream and the proposals it must yield (backtest side;
tests/integration/test_end_to_end.py runs the same files through the live worker)."""
from pathlib import Path

import pytest

from rules.config import load_rules
from streams.backtest import backtest_lines

SCENARIOS = sorted(Path(__file__).parent.joinpath("scenarios").glob("*.jsonl"))
SCENARIOS = [p for p in SCENARIOS if not p.name.endswith(".expected.jsonl")]
PARTITIONS = 4


def expected_of(path: Path) -> bytes:
    return path.with_name(path.stem + ".expected.jsonl").read_bytes()


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_backtest(path):
    result = backtest_lines(path.read_bytes().splitlines(), load_rules(), PARTITIONS)
    assert result.proposal_lines() == expected_of(path)
