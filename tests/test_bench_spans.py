"""The benchmark's per-span figures (`bench/run.py`): p99 per third of the load, by produce time,
and a process's CPU per span and its main thread's apart, read from real processes."""
from __future__ import annotations

import asyncio
import math
import subprocess
import sys

from bench import run as B
from streams.embedded import cpu_seconds, main_thread_cpu_seconds, stop_process


def test_p99_by_span_puts_each_sample_in_the_span_of_its_produce_time():
    start = 1_000_000.0
    # 100 samples per second of a 3-second load: 10 ms in the first second, 20 in the second,
    # and in the third 99 of 30 ms and one of 500 ms (its p99 is the largest of 100)
    lat = [(start + i * 10, 10.0) for i in range(100)]
    lat += [(start + 1000 + i * 10, 20.0) for i in range(100)]
    lat += [(start + 2000 + i * 10, 500.0 if i == 50 else 30.0) for i in range(100)]
    assert B.p99_by_span(lat, start, 3.0) == [10.0, 20.0, 500.0]
    # stamped before the start or after the end: the first or the last span, never dropped
    first, empty, last = B.p99_by_span([(start - 5, 7.0), (start + 3_500, 9.0)], start, 3.0)
    assert (first, last) == (7.0, 9.0) and math.isnan(empty)
    assert B.p99_by_span(lat, start, 3.0, spans=1) == [30.0]


class _Process:
    def __init__(self, code: str):
        self.proc = subprocess.Popen([sys.executable, "-c", code])

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)


async def test_cpu_by_span_reads_a_busy_process_as_busy_and_an_idle_one_as_idle():
    busy, idle = _Process("while True: pass"), _Process("import time; time.sleep(60)")
    try:
        busy_cores = await B.cpu_by_span(busy, 0.9, 3)
        idle_cores = await B.cpu_by_span(idle, 0.9, 3)
    finally:
        stop_process(busy.proc, kill=True)
        stop_process(idle.proc, kill=True)
    assert len(busy_cores) == 3 and len(idle_cores) == 3
    assert all(c > 0.2 for c in busy_cores), busy_cores       # a core's worth, less what others take
    assert all(c <= 0.05 for c in idle_cores), idle_cores


async def test_the_main_thread_is_told_apart_from_the_others():
    # a process whose main thread sleeps while another thread spins, and one the other way round;
    # each says "ready" once its start-up is over, so that is not counted
    spinner = "import threading, time\ndef spin():\n    while True: pass\n"
    off_main = subprocess.Popen([sys.executable, "-c", spinner + "threading.Thread(target=spin, daemon=True)"
                                 ".start()\nprint('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE)
    on_main = subprocess.Popen([sys.executable, "-c", spinner + "threading.Thread(target=time.sleep, args=(60,), "
                                "daemon=True).start()\nprint('ready', flush=True)\nspin()"], stdout=subprocess.PIPE)
    try:
        for p in (off_main, on_main):
            assert await asyncio.to_thread(p.stdout.readline) == b"ready\n"
        before = {p: (cpu_seconds(p.pid), main_thread_cpu_seconds(p.pid)) for p in (off_main, on_main)}
        await asyncio.sleep(0.9)       # a span of wall-clock time to measure over
        used = {p: (cpu_seconds(p.pid) - a, main_thread_cpu_seconds(p.pid) - m) for p, (a, m) in before.items()}
    finally:
        for p in (off_main, on_main):
            stop_process(p, kill=True)
            p.stdout.close()
    total, main = used[off_main]
    assert total > 0.2 and main <= 0.05, used[off_main]
    total, main = used[on_main]
    assert main > 0.2 and main >= total - 0.05, used[on_main]
