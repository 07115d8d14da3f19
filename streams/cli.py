"""The `upsell` command line: a thin main over the modules. A usage mistake is one line and exit
status 2 (`UsageError`)."""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import orjson

SAMPLE = Path(__file__).parent / "data" / "sample.jsonl"


class UsageError(Exception):
    """A mistake of the person at the command line: printed as one line, exit status 2."""


def fail(message: str):
    raise UsageError(message)


def _rules(path):
    from rules.config import RulesError, load_rules
    try:
        return load_rules(path)
    except RulesError as exc:
        fail(f"bad rules file: {exc}")


def _settings():
    from streams.settings import Settings, SettingsError
    try:
        return Settings.from_env()
    except SettingsError as exc:
        fail(str(exc))


def check_topics(s, timeout: float = 10.0) -> None:
    """Before a worker starts: the existing topics have UPSELL_PARTITIONS partitions, and the
    missing ones are created with that many (and UPSELL_REPLICATION_FACTOR replicas), so that no
    client's first use creates one with the broker's default count. A broker that does not answer
    within `timeout` is left to the worker, which waits for it."""
    import logging
    from streams.kafka import bootstrap_of, copartition_problem, ensure_topics, partition_counts
    from streams.replay import TOPICS
    names = [s.topic_prefix + t for t in TOPICS]
    changelog = f"{s.app_id}-customer-state-changelog"
    bootstrap = bootstrap_of(s.broker)
    try:
        counts = asyncio.run(asyncio.wait_for(partition_counts(bootstrap, [*names, changelog], s.kafka), timeout))
    except Exception as exc:      # noqa: BLE001 -- unreachable or refused: the worker reports it
        logging.getLogger("upsell").warning("could not check the topics' partition counts (%s): "
                                            "the worker starts and waits for the broker", type(exc).__name__)
        return
    problem = copartition_problem(counts, s.partitions)
    if problem:
        fail(problem)
    missing = [n for n in names if n not in counts]
    if missing:
        try:
            asyncio.run(asyncio.wait_for(
                ensure_topics(bootstrap, missing, s.partitions, s.kafka, s.replication_factor), timeout))
        except Exception as exc:      # noqa: BLE001 -- refused (ACLs, a policy): say what to create
            fail(f"topics {', '.join(missing)} do not exist and could not be created ({type(exc).__name__}: "
                 f"{str(exc)[:120]}): create them with {s.partitions} partitions, or set "
                 f"UPSELL_REPLICATION_FACTOR to what the cluster allows")


def cmd_generate(a) -> None:
    from streams.generate import generate
    out = sys.stdout.buffer if a.out in (None, "-") else open(a.out, "wb")
    for line in generate(a.customers, a.days, a.seed, a.start, _rules(a.rules), a.bad_rate):
        out.write(line)
    out.flush()


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return n


def cmd_simulate(a) -> None:
    from streams.backtest import backtest_lines, compare, summary
    from streams.recorded import open_stream
    from streams.settings import SettingsError, env_max_ahead, env_partitions, env_wrong_partition
    try:
        if a.partitions is None:
            a.partitions = env_partitions()
        max_ahead, wrong = env_max_ahead(), env_wrong_partition()
    except SettingsError as exc:
        fail(str(exc))
    rules = _rules(a.rules)
    lines = open_stream(a.file).read().splitlines()
    result = backtest_lines(lines, rules, a.partitions, max_ahead, wrong, a.jobs)
    if a.out:
        Path(a.out).write_bytes(result.proposal_lines())
    elif not a.compare:
        sys.stdout.buffer.write(result.proposal_lines())
    print(summary(result), file=sys.stderr if not a.out and not a.compare else sys.stdout)
    if a.compare:
        other = backtest_lines(lines, _rules(a.compare), a.partitions, max_ahead, wrong, a.jobs)
        diff = compare(result, other)
        print(f"\n--compare {a.compare}: {len(diff['appear'])} appear, {len(diff['disappear'])} disappear, "
              f"{len(diff['change'])} change")
        for p in diff["appear"]:
            print("+ " + orjson.dumps(p).decode())
        for p in diff["disappear"]:
            print("- " + orjson.dumps(p).decode())
        for old, new in diff["change"]:
            print("~ " + orjson.dumps(old).decode() + "\n  " + orjson.dumps(new).decode())


def cmd_replay(a) -> None:
    from streams.kafka import bootstrap_of
    from streams.recorded import open_stream
    from streams.replay import replay
    s = _settings()
    lines = open_stream(a.file).read().splitlines()
    res = asyncio.run(replay(lines, bootstrap_of(s.broker), s.partitions, a.topic_prefix or s.topic_prefix,
                             speed=a.speed, security=s.kafka, rules=_rules(s.rules), max_ahead=s.max_ahead_ms))
    print(f"sent {res['sent']} events in {res['seconds']:.1f} s "
          f"({res['unreadable']} unreadable lines, {res['unknown_topic']} on unknown topics skipped)")


def cmd_tail(a) -> None:
    from streams.kafka import bootstrap_of
    from streams.tail import tail
    s = _settings()
    topic = s.topic_prefix + ("proposals.suppressed" if a.suppressed else "proposals")
    try:
        asyncio.run(tail(bootstrap_of(s.broker), topic, a.from_beginning, security=s.kafka))
    except KeyboardInterrupt:
        pass


def cmd_worker(a) -> None:
    if a.rules:
        os.environ["UPSELL_RULES"] = a.rules
    from streams.settings import use_event_loop
    s = _settings()
    _rules(s.rules)
    check_topics(s)
    use_event_loop(s.event_loop)      # before the worker makes its loop
    from streams.app import app
    sys.argv = ["upsell", "worker", "-l", a.loglevel, *(["--without-web"] if a.without_web else [])]
    app.main()


def cmd_demo(a) -> None:
    from streams.demo import demo
    demo(Path(a.file) if a.file else SAMPLE, keep=a.keep)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="upsell", description="Upsell Engine: upsell, cross-sell and downsell "
                                "proposals in real time, without pushy selling.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="embedded broker + Redis + worker, replay the sample, show proposals")
    d.add_argument("--file", help="recorded stream to replay (default: the bundled sample)")
    d.add_argument("--keep", action="store_true", help="keep the worker running after the replay")
    d.set_defaults(func=cmd_demo)

    w = sub.add_parser("worker", help="the Faust worker (configured by UPSELL_* environment variables)")
    w.add_argument("--rules")
    w.add_argument("-l", "--loglevel", default="info", choices=["crit", "error", "warn", "info", "debug"])
    w.add_argument("--without-web", action="store_true")
    w.set_defaults(func=cmd_worker)

    r = sub.add_parser("replay", help="publish a recorded stream to the broker")
    r.add_argument("file", help="JSON Lines recording, or - for stdin")
    r.add_argument("--speed", type=float, default=None, help="x event time (default: as fast as possible)")
    r.add_argument("--topic-prefix", default=None)
    r.set_defaults(func=cmd_replay)

    s = sub.add_parser("simulate", help="offline backtest: proposals as JSON Lines and a summary")
    s.add_argument("file", help="JSON Lines recording, or - for stdin")
    s.add_argument("--rules")
    s.add_argument("--out", help="write proposals here instead of stdout")
    s.add_argument("--compare", metavar="RULES2", help="diff the proposals against a second rules file")
    s.add_argument("--partitions", type=_positive, default=None,
                   help="partition count of the live topics (co-purchase counts are per partition); "
                        "default: UPSELL_PARTITIONS, else 8")
    s.add_argument("--jobs", type=_positive, default=1,
                   help="processes to share the partitions among (the same output as one)")
    s.set_defaults(func=cmd_simulate)

    g = sub.add_parser("generate", help="a realistic synthetic recording (seeded)")
    g.add_argument("--customers", type=int, default=1000)
    g.add_argument("--days", type=int, default=120)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--start", default="2025-01-01")
    g.add_argument("--bad-rate", type=float, default=0.001, help="share of deliberately invalid events")
    g.add_argument("--rules")
    g.add_argument("--out", help="file to write (default: stdout)")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("tail", help="follow the proposals topic, pretty-printed")
    t.add_argument("--from-beginning", action="store_true")
    t.add_argument("--suppressed", action="store_true", help="follow proposals.suppressed instead")
    t.set_defaults(func=cmd_tail)
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UsageError as exc:
        print(f"upsell: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
