"""`upsell simulate` read once, in order (streams.simulate): the bytes and the summary of the
in-memory backtest, on every kind of recording; disorder within the window kept in memory that
does not grow with the input, beyond it (or a far-ahead event) the in-memory backtest instead."""
from __future__ import annotations

import io
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from rules.config import load_rules
from rules.timeutil import format_ts, parse_ts
from streams.backtest import backtest_lines, summary
from streams.generate import generate
from streams.simulate import DISORDER_MS, simulate

ROOT = Path(__file__).resolve().parent.parent
RULES = load_rules()


def _generated(seed: int = 5, bad_rate: float = 0.01) -> list[bytes]:
    return b"".join(generate(customers=120, days=60, seed=seed, start="2025-01-01", bad_rate=bad_rate)).splitlines()


def _both(tmp_path, lines: list[bytes], partitions: int = 8, wrong: str = "repartition", max_ahead=86_400_000):
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out, status = io.BytesIO(), io.BytesIO()
    outcome = simulate(str(path), RULES, partitions, out, max_ahead, wrong, status_out=status)
    whole = backtest_lines(lines, RULES, partitions, max_ahead, wrong)
    assert out.getvalue() == whole.proposal_lines()
    assert status.getvalue() == whole.status_lines()          # the lifecycle too
    assert summary(outcome.tally) == summary(whole)
    return outcome, whole


def _with_partitions(lines: list[bytes], share: float, seed: int) -> list[bytes]:
    """Some records say they were produced to another partition than their key's (forwarded)."""
    rng, out = random.Random(seed), []
    for line in lines:
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            out.append(line)
            continue
        if isinstance(rec, dict) and rng.random() < share:
            rec["partition"] = rng.randrange(8)
        out.append(orjson.dumps(rec))
    return out


@pytest.mark.parametrize("name", ["golden", "sample", "generated", "generated-4", "forwarded", "dead-letter"])
def test_the_bytes_and_summary_of_the_in_memory_backtest(tmp_path, name):
    golden = (ROOT / "tests" / "scenarios" / "saas_and_shop.jsonl").read_bytes().splitlines()
    lines, partitions, wrong = {
        "golden": (golden, 4, "repartition"),
        "sample": ((ROOT / "streams" / "data" / "sample.jsonl").read_bytes().splitlines(), 8, "repartition"),
        "generated": (_generated(), 8, "repartition"),
        "generated-4": (_generated(seed=9), 4, "repartition"),
        "forwarded": (_with_partitions(_generated(seed=2), 0.2, 1), 8, "repartition"),
        "dead-letter": (_with_partitions(_generated(seed=3), 0.2, 2), 8, "dead-letter"),
    }[name]
    outcome, whole = _both(tmp_path, lines, partitions, wrong)
    assert whole.proposals
    # the golden scenario has lines days out of order on purpose: it is loaded whole
    assert (outcome.loaded_whole is None) is (name != "golden"), outcome.loaded_whole


def _shifted(lines: list[bytes], rng: random.Random, most_ms: int) -> list[bytes]:
    """The lines of one topic moved earlier in the file by up to `most_ms` of event time: a dump
    of topics whose producers ran that far apart."""
    recs = [orjson.loads(line) for line in lines]
    keyed = []
    for i, r in enumerate(recs):
        ts = parse_ts(r["timestamp"])
        late = rng.randrange(most_ms) if r["topic"] == "usage" else 0
        keyed.append((ts + late, i, r))          # usage written that much later than it happened
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [orjson.dumps(r) for _, _, r in keyed]


def test_disorder_within_the_window_streams_with_the_same_bytes(tmp_path):
    lines = _shifted(_generated(seed=4, bad_rate=0), random.Random(4), DISORDER_MS - 1000)
    in_order = [parse_ts(orjson.loads(x)["timestamp"]) for x in lines]
    assert any(b < a for a, b in zip(in_order, in_order[1:]))          # out of line order indeed
    outcome, _ = _both(tmp_path, lines)
    assert outcome.loaded_whole is None


def test_disorder_beyond_the_window_is_loaded_whole_with_the_same_bytes(tmp_path):
    lines = _generated(seed=6, bad_rate=0)
    rec = orjson.loads(lines[-1])
    rec["timestamp"] = format_ts(parse_ts(rec["timestamp"]) - 5 * DISORDER_MS)
    lines.append(orjson.dumps(rec))          # older than events applied already (beyond the window)
    outcome, _ = _both(tmp_path, lines)
    assert outcome.loaded_whole and "minutes" in outcome.loaded_whole


def test_a_far_ahead_event_is_loaded_whole_and_dropped_as_live(tmp_path):
    lines = _generated(seed=7, bad_rate=0)
    usage = {"customer_id": "c-00002", "metric": "seats", "value": 1}
    lines.insert(len(lines) // 3, orjson.dumps({"topic": "usage", "key": "c-00002", "timestamp": "2099-01-01T00:00:00Z",
                                                "value": usage}))
    outcome, whole = _both(tmp_path, lines)
    assert outcome.loaded_whole and "UPSELL_MAX_AHEAD_MS" in outcome.loaded_whole
    assert any("AHEAD" in d.error for d in whole.dead_letters)


def test_the_command_streams_stdin_and_a_file_alike(tmp_path):
    lines = _generated(seed=8)
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    want = backtest_lines(lines, RULES, 8).proposal_lines()
    cli = [sys.executable, "-m", "streams.cli", "simulate"]
    piped = subprocess.run([*cli, "-"], input=path.read_bytes(), capture_output=True, cwd=ROOT, timeout=120)
    assert piped.returncode == 0 and piped.stdout == want, piped.stderr
    assert b"\x1b[" not in piped.stderr            # no progress bar in a pipe
    out = tmp_path / "out.jsonl"
    res = subprocess.run([*cli, str(path), "--out", str(out)], capture_output=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and out.read_bytes() == want
    assert b"total" in res.stdout                  # the summary goes to stdout when proposals go to a file


def test_progress_shows_on_a_terminal(tmp_path):
    """stderr a terminal: lines read, stream time and events/s (a pipe stays quiet, above)."""
    import os
    import pty
    lines = b"".join(generate(customers=400, days=60, seed=10, start="2025-01-01")).splitlines()   # > 4,096 lines
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "simulate", str(path), "--out", str(tmp_path / "o")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=child, stdin=subprocess.DEVNULL)
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:            # the child closed the terminal: it has ended
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert proc.wait(60) == 0
    assert b"simulate:" in seen and b"lines, stream time 2025-" in seen and b"events/s" in seen, seen[-500:]
