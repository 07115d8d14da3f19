"""The benchmark's throughput timing (`bench/run.py`): what ends a worker's backlog phase, and the
counters it reads from a worker's /metrics page."""
from __future__ import annotations

from collections import Counter

import pytest

from bench import run as B
from streams import metrics
from streams.embedded import metric_sum


class _Polled:
    """What `consume_rate` polls: a process whose read count and decisions move with each poll."""

    def __init__(self, reads: list[int], decided_at_poll: int):
        self.reads, self.decided_at_poll, self.polls, self.log = reads, decided_at_poll, 0, "-"

    def alive(self) -> None:
        pass

    def cpu_seconds(self) -> float:
        return 0.1 * self.polls

    def read(self, _p) -> int:
        self.polls += 1
        return self.reads[min(self.polls, len(self.reads)) - 1]

    def finished(self, _p) -> bool:
        return self.polls >= self.decided_at_poll


def test_the_rate_runs_until_the_work_is_finished_not_only_read():
    # every event read by the second poll, the decisions all sent at the fifth
    read_only = _Polled([100, 1000], decided_at_poll=5)
    rate_read, _, not_waited = B.consume_rate(read_only, read_only.read, 1000, timeout=30)
    waited = _Polled([100, 1000], decided_at_poll=5)
    rate_done, cpu_us, after_read = B.consume_rate(waited, waited.read, 1000, timeout=30,
                                                   finished=waited.finished)
    assert read_only.polls == 2 and waited.polls == 5
    # the same 900 events over four poll intervals instead of one
    assert rate_done < rate_read / 3
    assert cpu_us == pytest.approx((0.5 - 0.1) / 900 * 1e6)
    # three poll intervals between the last read and the last decision
    assert not_waited == 0 and 3 * B.POLL_S * 0.9 < after_read < 3 * B.POLL_S + 1.0


def test_polls_are_frequent_until_the_first_event_is_read_then_every_poll_interval(monkeypatch):
    # the timing starts at the first poll that sees events: a late one would leave out events
    # already read while keeping the CPU of applying them
    waits = []
    monkeypatch.setattr(B.time, "sleep", waits.append)
    polled = _Polled([0, 0, 0, 100, 500, 1000], decided_at_poll=7)
    B.consume_rate(polled, polled.read, 1000, timeout=30, finished=polled.finished)
    assert waits == [B.FIRST_POLL_S] * 3 + [B.POLL_S] * 3
    assert B.FIRST_POLL_S < B.POLL_S


def test_a_phase_that_never_finishes_fails_and_says_so():
    never = _Polled([100, 1000], decided_at_poll=10**9)
    with pytest.raises(RuntimeError, match="not consumed and finished within 1 s"):
        B.consume_rate(never, never.read, 1000, timeout=1, finished=never.finished)


def test_metric_sum_adds_every_label_set_of_one_family_from_the_real_page(monkeypatch):
    monkeypatch.setattr(metrics, "events_in", Counter({"usage": 7, "purchases": 5}))
    monkeypatch.setattr(metrics, "proposals_out", Counter({"usage_limit": 3, "cross_sell": 2}))
    monkeypatch.setattr(metrics, "suppressed_out", Counter({("usage_limit", "cooldown"): 4}))
    monkeypatch.setattr(metrics, "late_events", Counter({"usage": 11}))
    page = metrics.render(lambda topic, partition: None, clock_moves=9)
    assert metric_sum(page, "upsell_events_in_total") == 12
    assert metric_sum(page, "upsell_proposals_total") == 5
    assert metric_sum(page, "upsell_suppressed_total") == 4
    assert metric_sum(page, "upsell_clock_moves_total") == 9     # a family without labels
    assert metric_sum(page, "upsell_events_in") == 0              # a prefix is not a family
    assert "upsell_events_waiting" not in page                     # not given: not shown
    page = metrics.render(lambda topic, partition: None, waiting={2: 0, 0: 3})
    assert page.count("upsell_events_waiting{") == 2
    assert 'upsell_events_waiting{partition="0"} 3.0' in page and metric_sum(page, "upsell_events_waiting") == 3
    assert "process_cpu_seconds_total" in page and "upsell_decision_latency_seconds histogram" in page


def test_live_cost_splits_two_loads_into_a_fixed_part_and_a_part_per_event():
    # 0.3 of a core whatever the rate, plus 32 µs per event: 132 µs per event at 3,000 events/s,
    # 53.4 at 14,000
    fixed, per_event = 0.3e6, 32.0
    at = {r: fixed / r + per_event for r in (3000, 14000)}
    cost = B.live_cost(14000, at[14000], 3000, at[3000])
    assert cost == {"live_fixed_cores": 0.3, "live_marginal_us_per_event": 32.0}
    # the same either way round; one load alone cannot be split
    assert B.live_cost(3000, at[3000], 14000, at[14000]) == cost
    assert B.live_cost(3000, 140.0, 3000, 140.0) == {"live_fixed_cores": None,
                                                     "live_marginal_us_per_event": None}


def test_ratio_noop_is_the_median_of_the_pairs_own_ratios():
    pairs = [{"noop_eps": 20_000, "worker_eps": 15_000, "backlog_cpu_us_per_event": 50.0,
              "worker_decisions": 2077, "worker_decided_after_read_s": 0.0},
             {"noop_eps": 30_000, "worker_eps": 27_000, "backlog_cpu_us_per_event": 40.0,
              "worker_decisions": 2077, "worker_decided_after_read_s": 0.2},
             {"noop_eps": 10_000, "worker_eps": 12_000, "backlog_cpu_us_per_event": 60.0,
              "worker_decisions": 2076, "worker_decided_after_read_s": 0.0}]
    res = B.pair_summary(pairs)
    assert res["ratio_noop_pairs"] == [0.75, 0.9, 1.2]
    # the middle pair's own ratio, not the medians' (15,000 / 20,000 = 0.75)
    assert res["ratio_noop"] == 0.9
    assert (res["noop_eps"], res["worker_eps"], res["backlog_cpu_us_per_event"]) == (20_000, 15_000, 50.0)
    assert res["worker_eps_pairs"] == [15_000, 27_000, 12_000]
    # every pair's decisions are kept, so one that differs shows; the longest wait is reported
    assert res["worker_decisions"] == [2077, 2077, 2076] and res["worker_decided_after_read_s"] == 0.2
    # two pairs: the middle of the two
    assert B.pair_summary(pairs[:2])["ratio_noop"] == 0.825


def test_the_goal_rate_is_the_highest_rate_tried_that_met_the_goal():
    assert B.goal_rate([[14_000, 139.0], [11_200, 120.5], [8_400, 88.0]]) == 8_400
    assert B.goal_rate([[9_000, 100.0], [7_200, 60.0]]) == 9_000          # the goal is <= 100 ms
    assert B.goal_rate([[14_000, 139.0], [11_200, 101.0]]) is None
    assert B.goal_rate([[12_000, 95.0], [9_000, 110.0]], goal_ms=120) == 12_000
    # a rate run twice counts only if both runs met it
    assert B.goal_rate([[14_000, 139.0], [11_200, 95.0], [11_200, 130.0], [8_400, 88.0], [8_400, 91.0]]) == 8_400
    assert B.goal_rate([[11_200, 95.0], [11_200, 99.5]]) == 11_200
    assert B.goal_rate([[8_400, 120.0], [8_400, 60.0]]) is None


def test_ramp_shares_are_read_highest_first_and_below_half_load():
    assert B.ramp_shares("0.2,0.4,0.3") == [0.4, 0.3, 0.2]
    assert B.ramp_shares("") == []
    for bad in ("0.5", "0", "0.3,0.6", "-0.1"):
        with pytest.raises(Exception, match="between 0 and 0.5"):
            B.ramp_shares(bad)


async def test_the_ramps_take_turns_at_each_share_and_each_stops_once_met_twice():
    """The worker's and the relay's ramps alternate share by share, so that a slow spell of the
    machine lands on both; each stops at the first share it meets twice in a row."""
    runs = []
    p99 = {"worker": {0.3: [140, 0], 0.2: [90, 120], 0.1: [60, 70]},
           "relay": {0.3: [95, 99], 0.2: [0, 0], 0.1: [0, 0]}}

    def step(name):
        async def run(i, share, again):
            runs.append((name, share, again))
            return p99[name][share][again] <= B.GOAL_P99_MS
        return run

    await B.interleaved_ramps([0.3, 0.2, 0.1], {"worker": step("worker"), "relay": step("relay")})
    assert runs == [("worker", 0.3, False), ("relay", 0.3, False), ("relay", 0.3, True),
                    ("worker", 0.2, False), ("worker", 0.2, True), ("worker", 0.1, False), ("worker", 0.1, True)]
    runs.clear()
    await B.interleaved_ramps([0.3, 0.2], {"relay": step("relay")})       # the worker met it at half load
    assert runs == [("relay", 0.3, False), ("relay", 0.3, True)]


def test_simulate_is_timed_several_times_in_pairs_and_reports_their_medians(tmp_path):
    from rules.config import load_rules
    from streams.backtest import backtest_lines
    from streams.generate import generate
    rules = load_rules()
    stream = tmp_path / "stream.jsonl"
    stream.write_bytes(b"".join(generate(30, 10, 3, "2025-01-01", rules)))
    got = B.simulate_rates(stream, rules, 3)
    assert len(got["simulate_eps_runs"]) == 3 and all(r > 0 for r in got["simulate_eps_runs"])
    assert got["simulate_eps"] == sorted(got["simulate_eps_runs"])[1]
    # each one-process run is paired with a two-process one; the speed-up is the pairs' median
    assert len(got["simulate_jobs2_runs"]) == 3 and got["simulate_jobs2_eps"] == sorted(got["simulate_jobs2_runs"])[1]
    ratios = sorted(j / o for o, j in zip(got["simulate_eps_runs"], got["simulate_jobs2_runs"]))
    assert got["simulate_jobs2_speedup"] == round(ratios[1], 3)
    alone = backtest_lines(stream.read_bytes().splitlines(), rules, B.PARTITIONS)
    assert got["_result"].proposals == alone.proposals and got["_result"].suppressed == alone.suppressed


def test_the_live_cost_is_split_at_a_rate_the_worker_kept_up_with_apart_from_the_fixed_one():
    assert B.split_rate([14358, 7179, 4308], 7179, 3000) == 7179     # its goal rate
    assert B.split_rate([20472], 20472, 3000) == 20472               # half load met the goal
    # no goal rate: the lowest of the ramp's rates, not half load; 4308 and 2872 are too close
    assert B.split_rate([14358, 7179, 5743, 4308, 2872], None, 3000) == 5743
    assert B.split_rate([20472], None, 3000) is None
    assert B.split_rate([14358, 3500], 3500, 3000) is None           # the goal rate too close
