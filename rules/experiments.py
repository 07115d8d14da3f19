"""Offer tests and the holdout group: which variant of an offer a customer gets, and whether a
customer is held out. Pure functions of (rules, customer_id): the same in every worker, every
replay and every backtest, and the same for a customer however often asked.

A customer's place in [0, 1) is a hash of a salt and its id (`place`): the experiment's name for
its variant, "holdout" (and "holdout:<trigger>") for the holdout, so the two are independent. A
variant's share is its weight over the experiment's total.
"""
from __future__ import annotations

import hashlib

from .config import Experiment, Rules, Variant


def place(salt: str, customer_id: str) -> float:
    """A customer's place in [0, 1) for `salt`: uniform over customers, fixed for each."""
    digest = hashlib.blake2b(f"{salt}\x1f{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def variant_of(experiment: Experiment, customer_id: str) -> Variant:
    at = place(f"experiment:{experiment.name}", customer_id) * sum(v.weight for v in experiment.variants)
    for v in experiment.variants:
        if at < v.weight:
            return v
        at -= v.weight
    return experiment.variants[-1]      # rounding at the very top


def experiment_for(rules: Rules, trigger: str) -> Experiment | None:
    for e in rules.experiments:
        if trigger in e.triggers:
            return e
    return None


def held_out(rules: Rules, customer_id: str, trigger: str) -> str | None:
    """Why the customer gets no proposal of `trigger` (the global group, or the trigger's), or None."""
    if rules.holdout and place("holdout", customer_id) < rules.holdout:
        return f"in the holdout group ({rules.holdout:.0%} of customers)"
    share = rules.holdout_by_trigger.get(trigger)
    if share and place(f"holdout:{trigger}", customer_id) < share:
        return f"in the {trigger} holdout group ({share:.0%} of customers)"
    return None
