"""Event-time ordering, restore from persisted state, determinism, rules file, schemas."""
import gc
import random
from pathlib import Path

import orjson
import pytest

from rules.config import RulesError, default_rules_text, load_rules, parse_rules
from rules.engine import INPUT_TOPICS, PartitionEngine
from schemas.export import all_schemas, render
from schemas.records import INPUT_RECORDS
from schemas.validate import SPECS, ValidationError, validate
from streams import backtest as backtest_mod
from streams.backtest import backtest_lines, end_of_stream, status_order
from streams.generate import generate
from streams.recorded import decode_event, dumps, load_sorted

ROOT = Path(__file__).resolve().parent.parent
RULES = load_rules()


@pytest.fixture(scope="module")
def stream():
    return list(generate(customers=60, days=100, seed=11, start="2025-01-10"))


def _engine_run(events, order_seed=None, freeze_every=None):
    """Feed one partition like a live consumer: topics interleaved arbitrarily, then a final
    watermark; with `freeze_every`, a write-behind batch end (agents.ingest.PartitionRuntime.persist) every so many
    events: the customers that changed are serialised and kept frozen."""
    eng = PartitionEngine(RULES)
    out = []
    per_topic = {t: [e for e in events if e.topic == t] for t in INPUT_TOPICS}
    rng = random.Random(order_seed)
    n = 0
    while any(per_topic.values()):
        topic = rng.choice([t for t in INPUT_TOPICS if per_topic[t]]) if order_seed is not None else \
            min((t for t in INPUT_TOPICS if per_topic[t]), key=lambda t: per_topic[t][0].ts)
        e = per_topic[topic].pop(0)
        out += eng.push(e.topic, e.key, e.ts, decode_event(e.topic, e.key, e.raw, RULES.plan_by_name))
        n += 1
        if freeze_every and n % freeze_every == 0:
            eng.written({cid: dumps(c) for cid, c in eng.take_dirty()})
        if not per_topic[topic]:
            out += eng.mark(topic, end_of_stream(events[-1].ts))
    out += eng.tick(end_of_stream(events[-1].ts))
    return [orjson.dumps(p) for _, p in out]


def _valid(stream):
    events, _ = load_sorted(stream)
    ok = []
    for e in events:
        try:
            decode_event(e.topic, e.key, e.raw, RULES.plan_by_name)
            ok.append(e)
        except ValidationError:
            pass
    return ok


def test_output_does_not_depend_on_how_topics_interleave(stream):
    events = _valid(stream)
    in_order = _engine_run(events)
    assert len(in_order) > 50
    assert _engine_run(events, order_seed=1) == in_order
    assert _engine_run(events, order_seed=2) == in_order


def test_customers_frozen_at_each_batch_end_decide_the_same(stream):
    """The worker keeps a persisted customer as its JSON until it is needed again: thawed, it
    must decide exactly as the dict it was (samples back as tuples, floats exact)."""
    events = _valid(stream)
    assert _engine_run(events, freeze_every=7) == _engine_run(events)
    assert _engine_run(events, order_seed=3, freeze_every=50) == _engine_run(events)
    eng = PartitionEngine(RULES)
    usage = {"customer_id": "c", "metric": "seats", "value": 7}
    eng.push("customers", "c", 1_000, {"customer_id": "c", "segment": "b2b", "plan": "basic"}, offset=0)
    eng.push("usage", "c", 2_000, usage, offset=0)
    eng.tick(3_000)
    (cid, c), = eng.take_dirty()
    blob = dumps(c)
    eng.freeze(cid, blob)
    assert eng.customers[cid] is blob                      # kept as the bytes written
    assert eng.customer(cid) == c and eng.customers[cid] == c and eng.customers[cid] is not c
    eng.push("usage", "c", 4_000, usage, offset=1)
    eng.tick(5_000)                                         # thawed again: applied, dirty
    eng.freeze(cid, blob)                                   # changed since: stays a dict
    assert eng.customers[cid].__class__ is dict and eng.stats["duplicates"] == 0


def test_a_customer_is_frozen_after_a_batch_untouched():
    """`written`, at each batch end: a customer stays thawed while it is busy, and is kept as its
    JSON once a whole batch went by without it."""
    eng = PartitionEngine(RULES)
    usage = lambda cid, v: {"customer_id": cid, "metric": "seats", "value": v}   # noqa: E731

    def batch_end():
        blobs = {cid: dumps(c) for cid, c in eng.take_dirty()}
        eng.written(blobs)
        return blobs
    for cid in ("a", "b"):
        eng.push("customers", cid, 1_000, {"customer_id": cid, "segment": "b2b", "plan": "basic"})
    eng.tick(1_001)
    first = batch_end()
    assert sorted(first) == ["a", "b"] and all(eng.customers[c].__class__ is dict for c in "ab")
    eng.push("usage", "a", 2_000, usage("a", 3))
    eng.tick(2_001)
    second = batch_end()                  # "b" went this batch untouched: frozen as written
    assert list(second) == ["a"] and eng.customers["b"] is first["b"]
    assert eng.customers["a"].__class__ is dict
    third = batch_end()                   # nothing changed: "a" too, with its latest JSON
    assert third == {} and eng.customers["a"] is second["a"]
    eng.push("usage", "b", 3_000, usage("b", 4))
    eng.tick(3_001)
    assert eng.customer("b")["usage"]["seats"]["value"] == 4 and list(batch_end()) == ["b"]


def test_backtest_matches_single_partition_engine(stream):
    events = _valid(stream)
    res = backtest_lines(stream, RULES, partitions=1)
    run = [orjson.loads(b) for b in _engine_run(events)]
    expected = [p for p in run if "suppressed" not in p and "status" not in p]
    assert sorted(res.proposals, key=lambda p: p["proposal_id"]) == sorted(expected, key=lambda p: p["proposal_id"])
    statuses = [r for r in run if "status" in r]
    assert res.statuses and sorted(res.statuses, key=status_order) == sorted(statuses, key=status_order)


def test_generate_is_seeded_and_backtest_is_deterministic():
    a = b"".join(generate(customers=30, days=40, seed=5, start="2025-02-01"))
    b = b"".join(generate(customers=30, days=40, seed=5, start="2025-02-01"))
    c = b"".join(generate(customers=30, days=40, seed=6, start="2025-02-01"))
    assert a == b and a != c
    r1 = backtest_lines(a.splitlines(), RULES, 4).proposal_lines()
    r2 = backtest_lines(a.splitlines(), RULES, 4).proposal_lines()
    assert r1 == r2 and r1


def test_backtest_pauses_the_cycle_collector_and_restores_it(stream, monkeypatch):
    seen = []
    real = backtest_mod.run_backtest
    monkeypatch.setattr(backtest_mod, "run_backtest", lambda *a: seen.append(gc.isenabled()) or real(*a))
    assert gc.isenabled()
    paused = backtest_lines(stream, RULES, 4)
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        backtest_lines(stream, RULES, 4)
        assert not gc.isenabled()       # left as the caller had it
    finally:
        gc.enable()
    events, bad = load_sorted(stream)
    assert paused.proposal_lines() == real(events, RULES, 4, bad).proposal_lines()


def test_proposal_ids_depend_on_customer_trigger_offer_period():
    from rules.triggers import proposal_id
    base = proposal_id("c-1", "usage_limit", {"plan": "pro"}, "seats|0.8|basic|2026-04")
    assert base == proposal_id("c-1", "usage_limit", {"plan": "pro"}, "seats|0.8|basic|2026-04")
    assert base != proposal_id("c-2", "usage_limit", {"plan": "pro"}, "seats|0.8|basic|2026-04")
    assert base != proposal_id("c-1", "usage_limit", {"plan": "pro"}, "seats|0.8|basic|2026-05")
    assert base != proposal_id("c-1", "usage_limit", {"plan": "enterprise"}, "seats|0.8|basic|2026-04")


# ------------------------------------------------------------- rules file --
@pytest.mark.parametrize("old,new,line_text,msg", [
    ("min_gap_days = 7", "min_gap_days = -7", "min_gap_days", "expected a value >= 0"),
    ("high = 0.7 ", "high = \"lots\" ", "high =", "expected a number"),
    ("skus = [\"pc-laptop\", \"headset\", \"monitor\"]", "skus = [\"pc-laptop\", \"tablet\"]", "skus = [\"pc-laptop\", \"tablet\"]", "unknown SKU 'tablet'"),
    ("[guardrails]", "[guardrails\n", None, "not valid TOML"),
])
def test_bad_rules_file_names_line_and_reason(old, new, line_text, msg):
    text = default_rules_text().replace(old, new, 1)
    assert text != default_rules_text()
    with pytest.raises(RulesError) as err:
        parse_rules(text, "mine.toml")
    assert msg in str(err.value) and str(err.value).startswith("mine.toml:")
    if line_text:
        line = next(i for i, ln in enumerate(text.splitlines(), 1) if line_text in ln)
        assert err.value.line == line


def test_missing_rules_file_is_a_clear_error(tmp_path):
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "nope.toml")


# ---------------------------------------------------------------- schemas --
def test_published_json_schemas_are_in_step_with_the_code():
    for name, schema in all_schemas().items():
        path = ROOT / "docs" / "schemas" / f"{name}.json"
        assert path.read_text(encoding="utf-8") == render(schema), f"run: python -m schemas.export ({name})"


def test_faust_records_mirror_the_specs():
    for topic, record in INPUT_RECORDS.items():
        fields = record._options.fields
        assert list(fields) == [f.name for f in SPECS[topic]], topic
        required = {f.name for f in SPECS[topic] if f.required}
        assert required == set(fields) - set(record._options.defaults), topic


@pytest.mark.parametrize("topic,value,field,text", [
    ("usage", {"customer_id": "c", "metric": "seats", "value": True}, "value", "expected a number"),
    ("usage", {"customer_id": "c", "metric": "seats", "value": 1, "limit": 0}, "limit", "> 0"),
    ("purchases", {"customer_id": "c", "order_id": "o", "items": [{"sku": "a", "qty": 1.5}]}, "items[0].qty", "integer"),
    ("purchases", {"customer_id": "c", "order_id": "o", "items": []}, "items", "at least 1"),
    ("contracts", {"customer_id": "c", "plan": "pro", "term": "weekly", "renews_at": "2026-01-01T00:00:00Z"}, "term", "one of monthly, annual"),
    ("contracts", {"customer_id": "c", "plan": "pro", "term": "annual", "renews_at": "2026-01-01"}, "renews_at", "no timezone"),
    ("contracts", {"customer_id": "c", "plan": "gold", "term": "annual", "renews_at": "2026-01-01T00:00:00Z"}, "plan", "unknown plan 'gold'"),
    ("feedback", {"customer_id": "c", "type": "nps"}, "score", "needs a score"),
    ("feedback", {"customer_id": "c", "type": "nps", "score": 11}, "score", "<= 10"),
    ("customers", {"customer_id": "x", "segment": "b2b"}, "customer_id", "must equal the record key"),
])
def test_validation_names_field_value_and_expectation(topic, value, field, text):
    with pytest.raises(ValidationError) as err:
        validate(topic, value, key="c", plans=RULES.plan_by_name)
    assert err.value.field == field and text in str(err.value)


def test_compiled_validation_agrees_with_the_spec_walk():
    """The hot path's compiled checks (`COMPILED`) give the values and errors of `_check_object`."""
    import random
    from schemas.validate import COMPILED, _check_object

    class Sub(str):
        pass
    odd = [None, True, False, 0, 1, -1, 1.5, float("nan"), float("inf"), -0.0, 0.0, "", "x", Sub("s"),
           "b2b", "nps", "ticket", "open", "high", "monthly", "annual", "declined", "renewal", 10, 11, 12, 13,
           "2026-01-01T00:00:00Z", "2026-01-01T00:00:00.0005+09:00", "2026-01-01", [], [{}], ["x"],
           [{"sku": "a", "qty": 1}], [{"sku": "a", "qty": 2, "price": 0}, {"sku": "b", "qty": 0}], {}, {"a": 1}]
    rnd, outcomes = random.Random(3), set()

    def run(check, value):
        try:
            return "ok", check(value)
        except ValidationError as exc:
            return "error", exc.field, str(exc)
    valid = {"customers": {"customer_id": "c", "segment": "b2b", "fiscal_year_end_month": 3},
             "purchases": {"customer_id": "c", "order_id": "o", "items": [{"sku": "a", "qty": 1}], "total": 5},
             "usage": {"customer_id": "c", "metric": "seats", "value": 3, "limit": 10.5},
             "contracts": {"customer_id": "c", "plan": "pro", "term": "annual", "renews_at": "2026-01-01T00:00:00Z"},
             "feedback": {"customer_id": "c", "type": "nps", "score": 3},
             "proposal-outcomes": {"customer_id": "c", "proposal_id": "p", "trigger": "renewal", "offer": {},
                                   "outcome": "declined"}}
    for topic, fields in SPECS.items():
        names = [f.name for f in fields] + ["extra"]
        for _ in range(3000):
            value = dict(valid[topic])      # a valid event with up to two fields changed or dropped
            for name in rnd.sample(names, rnd.randrange(3)):
                if rnd.random() < 0.2:
                    value.pop(name, None)
                else:
                    value[name] = rnd.choice(odd)
            got = run(COMPILED[topic], value)
            assert repr(got) == repr(run(lambda v: _check_object(fields, v), value)), value
            outcomes.add((topic, got[0]))
        assert run(COMPILED[topic], [value]) == ("error", None, "expected a JSON object, got list")
    assert {o for _, o in outcomes} == {"ok", "error"} and len(outcomes) == 2 * len(SPECS)


def test_malformed_json_is_a_validation_error():
    with pytest.raises(ValidationError, match="malformed JSON"):
        decode_event("usage", "c", b'{"customer_id": "c", ', RULES.plan_by_name)


def test_the_partition_document_holds_no_high_water_mark_of_a_pending_event():
    """Pending events are read again after a restore; a document that counted them as read
    would let a re-read event on one topic go before an older pending event of another."""
    eng = PartitionEngine(RULES)
    for topic, ts in (("customers", 500), ("contracts", 1000), ("feedback", 1000),
                      ("proposal-outcomes", 1000), ("purchases", 1000), ("usage", 500)):
        eng.mark(topic, ts)
    assert eng.watermark == 500
    usage = {"customer_id": "c", "metric": "seats", "value": 1}
    eng.push("usage", "c", 700, usage, offset=0)       # both wait: customers hold stream time at 500
    eng.push("usage", "c", 900, usage, offset=1)
    assert eng.hw["usage"] == 900 and eng.buffered() == 2
    hw = eng.meta()["hw"]
    assert hw["usage"] == 700 and hw["customers"] == 500 and hw["contracts"] == 1000
    # restored, a customers event at 800 is read before the usage events come again: stored as
    # 900, the usage high-water mark would move stream time to 800, and the usage event at 700,
    # read next, would be late and applied out of time order
    restored = PartitionEngine.restore(RULES, 0, orjson.loads(orjson.dumps(eng.meta())), [])
    profile = {"customer_id": "c", "segment": "b2b"}
    restored.push("customers", "c", 800, profile, offset=0)
    assert restored.buffered() == 1 and restored.watermark == 700


def test_next_due_is_the_earliest_pending_event_or_timer():
    """What the live clock wakes for (streams.clock.LocalClock)."""
    t0 = 1_750_000_000_000
    eng = PartitionEngine(RULES)
    assert eng.next_due() is None
    usage = {"customer_id": "c", "metric": "seats", "value": 1}
    eng.push("usage", "c", t0 + 900, usage, offset=0)
    eng.push("customers", "c", t0 + 700, {"customer_id": "c", "segment": "b2b", "plan": "basic",
                                          "signup_at": "2024-01-01T00:00:00Z"}, offset=0)
    eng.push("usage", "c", t0 + 950, usage, offset=1)
    assert eng.buffered() == 3 and eng.next_due() == t0 + 700
    eng.tick(t0 + 701)                      # the profile is applied; the usage events wait
    assert eng.buffered() == 2 and eng.customers["c"]["due"] > t0 + 900
    assert eng.next_due() == t0 + 900
    eng.tick(t0 + 951)
    due = eng.customers["c"]["due"]         # a timer (the usage moved it: underuse)
    assert eng.buffered() == 0 and due is not None and eng.next_due() == due
    eng.tick(due + 1)                       # past the timer: it fires and the next one is later
    assert eng.customers["c"]["due"] != due and (eng.next_due() is None or eng.next_due() > due)


def _crash_run(events, seed, landed, crash_rate=0.004):
    """A live partition that crashes now and then, modelled on the worker, Faust and Kafka.
    The worker ends a batch now and then: it writes the customers that changed, and at some
    batch ends the partition document, to one changelog (a log of writes, in order), then
    acknowledges the batch's applied events. Faust commits now and then: the changelog is
    flushed (those writes are durable) and the contiguous acknowledged prefix of each topic is
    stored. A crash restores the tables from the changelog and re-reads every topic from its
    committed offset, so some events arrive a second time. `landed` says how much of the
    changelog written since the last commit survives the crash: "all", "some" (a prefix, as on
    one Kafka partition), or "apart" (documents and customers cut at different points, as if
    they were two topics: what the worker must not do)."""
    rng = random.Random(seed)
    per_topic = {t: [e for e in events if e.topic == t] for t in INPUT_TOPICS}
    pos = dict.fromkeys(INPUT_TOPICS, 0)
    acked = {t: set() for t in INPUT_TOPICS}
    prefix = dict(pos)
    committed = dict(pos)
    table = {}            # the changelog up to the last commit, compacted: key -> JSON
    log = []              # the writes since: (key, JSON), in order; the key "meta" is the document
    eng, out, crashes = PartitionEngine(RULES), [], 0

    def restore():
        meta = table.get("meta")
        customers = [v for k, v in table.items() if k != "meta"]     # JSON: restored frozen
        return PartitionEngine.restore(RULES, 0, meta and orjson.loads(meta), customers)

    end = end_of_stream(events[-1].ts)
    while any(pos[t] < len(per_topic[t]) for t in INPUT_TOPICS):
        topic = rng.choice([t for t in INPUT_TOPICS if pos[t] < len(per_topic[t])])
        e = per_topic[topic][pos[topic]]
        out += eng.push(e.topic, e.key, e.ts, decode_event(e.topic, e.key, e.raw, RULES.plan_by_name),
                        pos[topic])
        pos[topic] += 1
        if pos[topic] == len(per_topic[topic]):
            out += eng.mark(topic, end)
        if rng.random() < 0.2:                       # the end of a batch
            blobs = {cid: dumps(c) for cid, c in eng.take_dirty()}
            log += blobs.items()
            eng.written(blobs)                       # idle ones kept as written, as the worker does
            if rng.random() < 0.3:
                log.append(("meta", orjson.dumps(eng.meta())))
            for t, o in eng.take_applied():
                acked[t].add(o)
                while prefix[t] in acked[t]:
                    acked[t].discard(prefix[t])
                    prefix[t] += 1
        if rng.random() < 0.05:                      # commit: changelog flushed, offsets stored
            committed = dict(prefix)
            table.update(log)
            log = []
        if rng.random() < crash_rate:
            crashes += 1
            if landed == "all":
                kept = log
            elif landed == "some":
                kept = log[:rng.randint(0, len(log))]
            else:
                cut_c, cut_m = rng.randint(0, len(log)), rng.randint(0, len(log))
                kept = [w for i, w in enumerate(log) if i < (cut_m if w[0] == "meta" else cut_c)]
            table.update(kept)
            log = []
            eng = restore()
            pos, prefix = dict(committed), dict(committed)
            acked = {t: set() for t in INPUT_TOPICS}
    out += eng.tick(end)
    return out, crashes, eng.stats["duplicates"]


@pytest.mark.parametrize("seed", [2, 13])   # both failed when documents held pending events
@pytest.mark.parametrize("landed", ["all", "some"])
def test_restart_from_tables_and_committed_offsets_changes_nothing(stream, landed, seed):
    events = _valid(stream)
    straight = set(_engine_run(events))
    out, crashes, duplicates = _crash_run(events, seed=seed, landed=landed)
    assert crashes >= 3 and duplicates > 0
    assert {orjson.dumps(p) for _, p in out} == straight


def test_usage_samples_stay_in_time_order_when_a_sample_is_late():
    from rules.state import apply_usage, new_customer, set_plan
    from rules.timeutil import DAY
    c = new_customer("c-1")
    set_plan(c, "basic", 0)
    d = 20_000 * DAY

    def at(day, hour, value):
        apply_usage(c, {"metric": "seats", "value": value}, d + day * DAY + hour * 3_600_000, RULES)

    at(3, 9, 10)
    at(5, 9, 20)
    at(4, 9, 15)        # late, a day of its own: inserted between
    at(3, 12, 30)       # late, same day as a sample: peak merged, later reading wins
    at(3, 8, 5)         # late and earlier in that day: only the peak may change
    days = [(s[0] - d) // DAY for s in c["usage"]["seats"]["samples"]]
    assert days == [3, 4, 5]
    s3 = c["usage"]["seats"]["samples"][0]
    assert s3[0] == d + 3 * DAY + 12 * 3_600_000 and s3[1] == 30 and s3[2] == 30
    assert c["usage"]["seats"]["samples"][2][1] == 20


def test_usage_samples_leave_the_garbage_collectors_watch_live_and_restored(stream):
    """Samples are most of a customer's objects; as tuples of numbers the cyclic collector stops
    tracking them, so a full collection does not walk them (see state.apply_usage)."""
    res = backtest_lines(stream, RULES, 2)
    gc.collect()
    for eng in res.engines.values():
        restored = PartitionEngine.restore(RULES, eng.partition, orjson.loads(orjson.dumps(eng.meta())),
                                           [orjson.loads(orjson.dumps(c)) for c in eng.customers.values()])
        assert restored.customers == eng.customers         # JSON's lists come back as tuples
        gc.collect()
        for e in (eng, restored):
            samples = [s for c in e.customers.values() for u in c["usage"].values() for s in u["samples"]]
            assert len(samples) > 500 and not any(gc.is_tracked(s) for s in samples)


def test_events_out_of_the_event_time_range_are_dead_letters_in_the_backtest(stream):
    """A recording's event dated before 1970 or from 2100 on is a dead letter; it neither fires
    timers nor moves the end of the stream (a usage sample dated 9000 gave 146,487 proposals)."""
    usage = next(orjson.loads(line) for line in stream if b'"usage"' in line)
    odd = [orjson.dumps({**usage, "timestamp": t}) for t in ("2150-01-01T00:00:00Z", "1969-12-31T23:59:59Z")]
    plain = backtest_lines(stream, RULES, 4)
    got = backtest_lines(list(stream) + odd, RULES, 4)
    assert got.proposal_lines() == plain.proposal_lines() and got.suppressed == plain.suppressed
    timed = [d for d in got.dead_letters if "record timestamp" in d.error]
    assert sorted(d.line for d in timed) == [len(stream) + 1, len(stream) + 2]
    assert len(got.dead_letters) == len(plain.dead_letters) + 2
