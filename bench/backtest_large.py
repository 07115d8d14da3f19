"""A backtest of a large recording: peak memory and speed of `upsell generate` and `upsell simulate`
(read once, in order: streams/simulate.py) against the in-memory backtest, same file, same bytes.

    python bench/backtest_large.py [--customers 10000] [--days 365] [--keep FILE]

Each step runs in a process of its own, so its peak resident set (ru_maxrss, from wait4) is its
own. The in-memory backtest is `streams.backtest.backtest_lines` on the whole file, as
`simulate --jobs 1` ran before streaming (and as `--compare` and `--jobs N` still run). The last
line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
IN_MEMORY = """
import sys
from rules.config import load_rules
from streams.backtest import backtest_lines
lines = open(sys.argv[1], "rb").read().splitlines()
with open(sys.argv[2], "wb") as out:
    out.write(backtest_lines(lines, load_rules(), 8).proposal_lines())
"""


def measured(argv: list[str], stdout=subprocess.DEVNULL) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a child process."""
    began = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=stdout, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited with {proc.returncode}")
    return took, usage.ru_maxrss / 1024


def main(a) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="upsell-large-"))
    rec = Path(a.keep) if a.keep else tmp / "history.jsonl"
    cli = [sys.executable, "-m", "streams.cli"]
    res: dict = {"customers": a.customers, "days": a.days}
    if not rec.exists():
        took, rss = measured([*cli, "generate", "--customers", str(a.customers), "--days", str(a.days),
                              "--seed", "1", "--start", "2025-01-01", "--out", str(rec)])
        res.update(generate_seconds=round(took, 1), generate_rss_mb=round(rss, 1))
        print(f"generate: {took:.1f} s, peak RSS {rss:.0f} MB", file=sys.stderr)
    with open(rec, "rb") as f:
        events = sum(1 for _ in f)
    res.update(events=events, recording_mb=round(rec.stat().st_size / 2**20, 1))
    streamed, whole = tmp / "streamed.jsonl", tmp / "whole.jsonl"
    took, rss = measured([*cli, "simulate", str(rec), "--out", str(streamed)])
    res.update(stream_seconds=round(took, 1), stream_eps=round(events / took), stream_rss_mb=round(rss, 1))
    print(f"simulate (streaming): {took:.1f} s, {events / took:,.0f} events/s, peak RSS {rss:.0f} MB",
          file=sys.stderr)
    if not a.skip_in_memory:
        took, rss = measured([sys.executable, "-c", IN_MEMORY, str(rec), str(whole)])
        res.update(whole_seconds=round(took, 1), whole_eps=round(events / took), whole_rss_mb=round(rss, 1),
                   same_bytes=streamed.read_bytes() == whole.read_bytes())
        print(f"in-memory backtest: {took:.1f} s, {events / took:,.0f} events/s, peak RSS {rss:.0f} MB; "
              f"the same bytes: {res['same_bytes']}", file=sys.stderr)
    res["proposals"] = sum(1 for _ in open(streamed, "rb"))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--keep", help="the recording's path: generated there once, reused after")
    ap.add_argument("--skip-in-memory", action="store_true", help="only the streaming backtest")
    print(orjson.dumps(main(ap.parse_args())).decode())
