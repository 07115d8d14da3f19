"""JSON Schemas of the output topics (proposals, proposals.suppressed, dead letters)."""
from __future__ import annotations

_TS = {"type": "string", "format": "date-time"}

PROPOSAL_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "upsell-engine/proposals.json",
    "title": "proposal (schema 1)",
    "type": "object",
    "properties": {
        "schema": {"const": 1, "description": "contract version; additive changes keep 1"},
        "proposal_id": {"type": "string", "description":
                        "deterministic hash of (customer, trigger, offer, period): dedupe on it"},
        "customer_id": {"type": "string", "description": "also the record key"},
        "kind": {"enum": ["upsell", "cross_sell", "downsell"]},
        "trigger": {"enum": ["usage_limit", "usage_forecast", "renewal", "fiscal_year_end", "purchase",
                             "co_purchase", "underuse", "season", "volume"]},
        "offer": {"type": "object", "description": "plan / term / skus / bundle / campaign / line"},
        "audience": {"enum": ["decision_maker", "admin", "user"]},
        "reason": {"type": "string", "description": "human text, for the message"},
        "evidence": {"type": "object", "description": "structured facts behind the reason"},
        "priority": {"type": "integer"},
        "created_at": {**_TS, "description": "event time of the decision, never wall-clock time"},
        "valid_until": _TS,
    },
    "required": ["schema", "proposal_id", "customer_id", "kind", "trigger", "offer", "audience",
                 "reason", "evidence", "priority", "created_at", "valid_until"],
    "additionalProperties": False,
}

SUPPRESSED_SCHEMA = {
    **PROPOSAL_SCHEMA,
    "$id": "upsell-engine/proposals.suppressed.json",
    "title": "suppressed proposal (schema 1)",
    "properties": {**PROPOSAL_SCHEMA["properties"], "suppressed": {
        "type": "object",
        "properties": {
            "reason": {"enum": ["cooldown", "unhappy_customer", "quiet_period", "outranked",
                                "min_gap", "frequency_cap"]},
            "detail": {"type": "string"}},
        "required": ["reason", "detail"]}},
    "required": PROPOSAL_SCHEMA["required"] + ["suppressed"],
}

DEAD_LETTER_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "upsell-engine/dead-letters.json",
    "title": "dead letter (schema 1)",
    "type": "object",
    "properties": {
        "schema": {"const": 1},
        "topic": {"type": "string", "description": "the topic the record came from (without the prefix): an input "
                  "topic, or proposals / proposals.suppressed when the read model could not read it"},
        "partition": {"type": "integer"},
        "offset": {"type": "integer"},
        "timestamp": {"type": ["string", "null"], "format": "date-time"},
        "key": {"type": ["string", "null"]},
        "error": {"type": "string", "description": "why it was rejected, naming the field"},
        "field": {"type": ["string", "null"]},
        "original": {"type": ["string", "null"], "description": "the original bytes as UTF-8 text, if they are"},
        "original_b64": {"type": "string", "description": "the original bytes, base64"},
    },
    "required": ["schema", "topic", "partition", "offset", "timestamp", "key", "error", "field",
                 "original", "original_b64"],
    "additionalProperties": False,
}
