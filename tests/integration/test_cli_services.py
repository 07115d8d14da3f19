"""The command line with real services: `upsell up` and `upsell demo --keep` stop everything they
started on SIGTERM; `replay` refuses topics of another partition count and warns about events the
topics are already past; `tail --json` prints the records as they are."""
from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import pytest
import redis

from streams.embedded import free_port
from streams.kafka import ensure_topics, partition_counts
from streams.recorded import load_sorted
from streams.tail import tail
from tests.integration.conftest import produce

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "streams" / "data" / "sample.jsonl"


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def temp_dirs(prefix: str) -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(prefix + "*")}


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def read_until(proc: subprocess.Popen, text: str, timeout: float) -> str:
    """The process's output up to the first line holding `text` (its output is read as it comes)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} not printed within {timeout} s: {''.join(seen)[-3000:]}")


def stopped_cleanly(proc: subprocess.Popen, kids: set[int], timeout: float = 60) -> None:
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest, rest
    deadline = time.monotonic() + 10
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)      # the children's exit, another process's: polled
    assert not [k for k in kids if alive(k)], "orphans left running"


async def test_up_serves_a_broker_and_redis_and_sigterm_stops_both():
    before = temp_dirs("upsell-up-")
    bport, rport = free_port(), free_port()
    proc = start("up", "--broker-port", str(bport), "--redis-port", str(rport), "--partitions", "3")
    try:
        text = read_until(proc, "export UPSELL_BROKER", 60)
        assert f"UPSELL_BROKER=kafka://127.0.0.1:{bport}" in text and "UPSELL_PARTITIONS=3" in text
        assert f"UPSELL_REDIS_URL=redis://127.0.0.1:{rport}/0" in text
        kids = children(proc.pid)
        assert len(kids) == 2
        await ensure_topics(f"127.0.0.1:{bport}", ["t-up"], 3)
        assert await partition_counts(f"127.0.0.1:{bport}", ["t-up"]) == {"t-up": 3}
        assert redis.Redis(port=rport).ping()
    finally:
        if proc.poll() is None:
            stopped_cleanly(proc, kids)
    assert temp_dirs("upsell-up-") == before


def test_demo_keep_stops_everything_on_sigterm():
    before = temp_dirs("upsell-demo-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPSELL_")}
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "demo", "--keep"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    kids: set[int] = set()
    try:
        text = read_until(proc, "tail --from-beginning", 240)
        assert "the same as `upsell simulate`" in text, text
        assert all(len(line) <= 100 for line in text.splitlines()), max(text.splitlines(), key=len)
        kids = children(proc.pid)
        assert len(kids) == 3           # broker, Redis, worker
        assert "running until Ctrl-C" in text and "curl http://127.0.0.1:" in text
    finally:
        if proc.poll() is None:
            stopped_cleanly(proc, kids)
    assert temp_dirs("upsell-demo-") == before


def upsell(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, env={**os.environ, **env})


def test_replay_refuses_topics_of_another_partition_count(broker):
    prefix = f"cli-mismatch-{os.getpid()}."
    asyncio.run(ensure_topics(broker.bootstrap, [prefix + "usage"], 3))
    res = upsell("replay", str(SAMPLE), env={"UPSELL_BROKER": broker.url, "UPSELL_TOPIC_PREFIX": prefix,
                                             "UPSELL_PARTITIONS": "4"})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"UPSELL_PARTITIONS=4 but {prefix}usage has 3" in res.stderr


def test_replay_warns_with_the_count_of_events_the_topics_are_past(broker):
    prefix = f"cli-again-{os.getpid()}."
    env = {"UPSELL_BROKER": broker.url, "UPSELL_TOPIC_PREFIX": prefix, "UPSELL_PARTITIONS": "4"}
    first = upsell("replay", str(SAMPLE), env=env)
    assert first.returncode == 0 and "warning" not in first.stderr, first.stderr
    sent = int(first.stdout.split()[1])
    again = upsell("replay", str(SAMPLE), env=env)
    assert again.returncode == 0, again.stderr
    warning = [ln for ln in again.stderr.splitlines() if "warning" in ln]
    # the first replay's end-of-stream watermark (the last event + 1 ms) is where the topics are:
    # every event older than that less the lateness (2 s by default) would be late
    events, _ = load_sorted(SAMPLE.read_bytes().splitlines())
    end = max(e.ts for e in events) + 1
    late = sum(1 for e in events if e.ts < end - 2000)
    assert 0 < late < sent
    assert len(warning) == 1 and f"{late} of {sent} events" in warning[0], again.stderr
    assert "counts them late" in warning[0]


async def test_tail_json_prints_each_record_as_it_is_and_names_what_is_not_one(broker, capsys):
    topic = f"cli-tail-{os.getpid()}.proposals"
    await ensure_topics(broker.bootstrap, [topic], 1)
    from rules.config import load_rules
    from streams.backtest import backtest_lines
    scenario = (ROOT / "tests" / "scenarios" / "saas_and_shop.jsonl").read_bytes().splitlines()
    values = [orjson.dumps(p) for p in backtest_lines(scenario, load_rules(), 4).proposals[:3]]
    records = [values[0], None, values[1], b"\xff\xfe not text", b"{not json", values[2]]
    await produce(broker.bootstrap, [(topic, b"c", v, 1_700_000_000_000 + i) for i, v in enumerate(records)])
    for as_json in (True, False):
        out = io.StringIO()
        await asyncio.wait_for(tail(broker.bootstrap, topic, from_beginning=True, limit=len(records), out=out,
                                    as_json=as_json), 60)
        if as_json:
            assert out.getvalue().splitlines() == [v.decode() for v in values]
        err = capsys.readouterr().err.splitlines()
        assert [line.rsplit(" ", 4)[-4] for line in err] == ["1", "3", "4"], err     # their offsets


async def test_tail_status_names_a_record_it_cannot_print_and_goes_on(broker, capsys):
    """A lifecycle record whose revenue is not a number cannot be printed: it is named on stderr
    and the records after it are printed."""
    topic = f"cli-tail-{os.getpid()}.proposal-status"
    await ensure_topics(broker.bootstrap, [topic], 1)
    from rules.config import load_rules
    from streams.backtest import backtest_lines
    scenario = (ROOT / "tests" / "scenarios" / "saas_and_shop.jsonl").read_bytes().splitlines()
    good = backtest_lines(scenario, load_rules(), 4).statuses[0]
    bad = {**good, "status": "converted", "via": "outcome", "revenue": {"expansion_mrr": "a lot"}}
    records = [orjson.dumps(good), orjson.dumps(bad), orjson.dumps(good)]
    await produce(broker.bootstrap, [(topic, b"c", v, 1_700_000_000_000 + i) for i, v in enumerate(records)])
    out = io.StringIO()
    await asyncio.wait_for(tail(broker.bootstrap, topic, from_beginning=True, limit=len(records), out=out), 60)
    assert len(out.getvalue().splitlines()) == 2 and good["proposal_id"][:12] in out.getvalue()
    err = capsys.readouterr().err.splitlines()
    assert [line.rsplit(" ", 4)[-4] for line in err] == ["1"], err
