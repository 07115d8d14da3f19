"""The `upsell` command line (PRODUCT.md §7). A thin main over the modules."""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import orjson

SAMPLE = Path(__file__).parent / "data" / "sample.jsonl"


def _rules(path):
    from rules.config import RulesError, load_rules
    try:
        return load_rules(path)
    except RulesError as exc:
        sys.exit(f"upsell: bad rules file: {exc}")


def cmd_generate(a) -> None:
    from streams.generate import generate
    out = sys.stdout.buffer if a.out in (None, "-") else open(a.out, "wb")
    for line in generate(a.customers, a.days, a.seed, a.start, _rules(a.rules), a.bad_rate):
        out.write(line)
    out.flush()


def cmd_simulate(a) -> None:
    from streams.backtest import backtest_lines, compare, summary
    from streams.recorded import open_stream
    rules = _rules(a.rules)
    lines = open_stream(a.file).read().splitlines()
    result = backtest_lines(lines, rules, a.partitions)
    if a.out:
        Path(a.out).write_bytes(result.proposal_lines())
    elif not a.compare:
        sys.stdout.buffer.write(result.proposal_lines())
    print(summary(result), file=sys.stderr if not a.out and not a.compare else sys.stdout)
    if a.compare:
        other = backtest_lines(lines, _rules(a.compare), a.partitions)
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
    from streams.settings import Settings
    s = Settings.from_env()
    lines = open_stream(a.file).read().splitlines()
    res = asyncio.run(replay(lines, bootstrap_of(s.broker), s.partitions, a.topic_prefix or s.topic_prefix,
                             speed=a.speed))
    print(f"sent {res['sent']} events in {res['seconds']:.1f} s "
          f"({res['unreadable']} unreadable lines, {res['unknown_topic']} on unknown topics skipped)")


def cmd_tail(a) -> None:
    from streams.kafka import bootstrap_of
    from streams.settings import Settings
    from streams.tail import tail
    s = Settings.from_env()
    topic = s.topic_prefix + ("proposals.suppressed" if a.suppressed else "proposals")
    try:
        asyncio.run(tail(bootstrap_of(s.broker), topic, a.from_beginning))
    except KeyboardInterrupt:
        pass


def cmd_worker(a) -> None:
    if a.rules:
        os.environ["UPSELL_RULES"] = a.rules
    from streams.settings import Settings, use_event_loop
    use_event_loop(Settings.from_env().event_loop)      # before the worker makes its loop
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
    s.add_argument("--partitions", type=int, default=int(os.environ.get("UPSELL_PARTITIONS", "8")),
                   help="partition count of the live topics (co-purchase counts are per partition)")
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
    args.func(args)


if __name__ == "__main__":
    main()
