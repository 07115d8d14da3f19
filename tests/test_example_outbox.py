"""examples/notification_service.py's policy (`Outbox`), with its clock in the test's hands:
dedupe, quiet hours, offers no longer valid when they may be sent, and the commit boundary."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("notification_service", ROOT / "examples" / "notification_service.py")
ns = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = ns
spec.loader.exec_module(ns)

QUIET = (22, 8)


def proposal(pid: str, created: str, until: str) -> dict:
    return {"proposal_id": pid, "customer_id": "c-1", "trigger": "usage_limit", "offer": {"plan": "pro"},
            "reason": "r", "created_at": created, "valid_until": until}


def at(text: str) -> int:
    return ns.parse_ts(text)


def test_send_time_skips_the_quiet_hours_one_tick_at_each_edge():
    assert ns.send_time(at("2025-03-03T21:59:59Z"), QUIET) == at("2025-03-03T21:59:59Z")
    assert ns.send_time(at("2025-03-03T22:00:00Z"), QUIET) == at("2025-03-04T08:00:00Z")
    assert ns.send_time(at("2025-03-04T07:59:59Z"), QUIET) == at("2025-03-04T08:00:00Z")
    assert ns.send_time(at("2025-03-04T08:00:00Z"), QUIET) == at("2025-03-04T08:00:00Z")
    assert ns.send_time(at("2025-03-04T03:00:00Z"), (1, 5)) == at("2025-03-04T05:00:00Z")      # not across midnight


def test_a_proposal_is_held_through_the_night_then_sent_once():
    box = ns.Outbox(QUIET)
    p = proposal("a", "2025-03-03T23:10:00Z", "2025-03-10T00:00:00Z")
    assert box.offer(p, ("tp", 5)) is True
    assert box.offer(dict(p), ("tp", 6)) is False                 # redelivered: the same id
    assert box.due(at("2025-03-04T07:59:59Z")) == []              # still quiet
    assert box.oldest_held() == {"tp": 5}                          # a commit stops before it
    assert box.due(at("2025-03-04T08:00:00Z")) == [("send", at("2025-03-04T08:00:00Z"), p)]
    assert box.oldest_held() == {} and box.due(at("2025-03-05T00:00:00Z")) == []


def test_an_offer_that_ends_before_it_may_be_sent_is_dropped():
    box = ns.Outbox(QUIET)
    gone = proposal("b", "2025-03-03T23:10:00Z", "2025-03-04T08:00:00Z")      # ends as the night does
    kept = proposal("c", "2025-03-03T23:20:00Z", "2025-03-04T08:00:01Z")
    box.offer(gone)
    box.offer(kept)
    assert [(a, p["proposal_id"]) for a, _, p, *_ in box.due(at("2025-03-04T09:00:00Z"))] == [("drop", "b"), ("send", "c")]


def status(pid: str, state: str, **kw) -> dict:
    return {"proposal_id": pid, "status": state, "at": "2025-03-04T01:00:00Z", **kw}


def test_a_proposal_withdrawn_or_converted_while_held_is_not_sent():
    box = ns.Outbox(QUIET)
    for pid in "wxyz":
        box.offer(proposal(pid, "2025-03-03T23:10:00Z", "2025-03-10T00:00:00Z"))
    box.status(status("w", "withdrawn", reason="unhappy_customer"))
    box.status(status("x", "converted", via="observed"))
    box.status(status("y", "expired"))                      # expiry is the proposal's own valid_until
    box.status(status("v", "withdrawn", reason="plan_changed"))     # before its proposal is read
    box.offer(proposal("v", "2025-03-03T23:30:00Z", "2025-03-10T00:00:00Z"))
    got = [(a, p["proposal_id"], *why) for a, _, p, *why in box.due(at("2025-03-04T08:00:00Z"))]
    assert got == [("drop", "v", "withdrawn (plan_changed)"), ("drop", "w", "withdrawn (unhappy_customer)"),
                   ("drop", "x", "converted already (observed)"), ("send", "y"), ("send", "z")]
    box.status(status("z", "withdrawn", reason="plan_changed"))    # after it was sent: nothing to do
    assert box.cancelled == {} and box.statuses == 5


def test_answers_are_fixed_by_the_id_and_make_valid_outcome_records():
    from schemas.validate import validate
    import orjson
    answers = [ns.answer(f"id-{i}") for i in range(1000)]
    assert answers == [ns.answer(f"id-{i}") for i in range(1000)]
    assert 250 < answers.count("accepted") < 350 and 150 < answers.count("declined") < 250
    p = proposal("d", "2025-03-03T10:00:00Z", "2025-03-10T00:00:00Z")
    value = validate("proposal-outcomes", orjson.loads(ns.outcome_record(p, "declined")), "c-1")
    assert value["outcome"] == "declined" and value["proposal_id"] == "d"
