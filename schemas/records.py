"""Faust records for every topic: the typed view of the contract.

The hot path decodes with orjson and validates with `schemas.validate`
(explicit, no silent coercion); these records document the same fields for
Python consumers and are checked against `SPECS` by tests/test_engine.py.
"""
from __future__ import annotations

from typing import List, Optional

import faust


class CustomerProfile(faust.Record, serializer="json"):
    customer_id: str
    segment: Optional[str] = None
    plan: Optional[str] = None
    signup_at: Optional[str] = None
    fiscal_year_end_month: Optional[int] = None
    name: Optional[str] = None


class PurchaseItem(faust.Record, serializer="json"):
    sku: str
    qty: int
    price: Optional[float] = None


class Purchase(faust.Record, serializer="json"):
    customer_id: str
    order_id: str
    items: List[PurchaseItem]
    total: Optional[float] = None
    currency: Optional[str] = None


class UsageReport(faust.Record, serializer="json"):
    customer_id: str
    metric: str
    value: float
    limit: Optional[float] = None


class Contract(faust.Record, serializer="json"):
    customer_id: str
    plan: str
    term: str
    renews_at: str
    started_at: Optional[str] = None


class Feedback(faust.Record, serializer="json"):
    customer_id: str
    type: str
    score: Optional[int] = None
    ticket_id: Optional[str] = None
    severity: Optional[str] = None
    status: Optional[str] = None
    comment: Optional[str] = None


class ProposalOutcome(faust.Record, serializer="json"):
    customer_id: str
    proposal_id: str
    trigger: str
    offer: dict
    outcome: str


class Proposal(faust.Record, serializer="json"):
    schema: int
    proposal_id: str
    customer_id: str
    kind: str
    trigger: str
    offer: dict
    audience: str
    reason: str
    evidence: dict
    priority: int
    created_at: str
    valid_until: str


class SuppressedProposal(Proposal, serializer="json"):
    suppressed: dict = None


class DeadLetter(faust.Record, serializer="json"):
    schema: int
    topic: str
    partition: Optional[int]
    offset: Optional[int]
    timestamp: Optional[str]
    key: Optional[str]
    error: str
    field: Optional[str]
    original: Optional[str]
    original_b64: Optional[str]
    original_size: int
    original_sha256: str
    truncated: bool


INPUT_RECORDS = {
    "customers": CustomerProfile, "purchases": Purchase, "usage": UsageReport,
    "contracts": Contract, "feedback": Feedback, "proposal-outcomes": ProposalOutcome,
}
