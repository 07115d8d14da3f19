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
    "additionalProperties": True,
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
    "title": "dead letter (schema 2)",
    "type": "object",
    "properties": {
        "schema": {"const": 2},
        "topic": {"type": "string", "description": "the topic the record came from (without the prefix): an input "
                  "topic, or proposals / proposals.suppressed when the read model could not read it"},
        "partition": {"type": ["integer", "null"]},
        "offset": {"type": ["integer", "null"]},
        "timestamp": {"type": ["string", "null"], "format": "date-time"},
        "key": {"type": ["string", "null"], "description": "the record key as text, its first 1,024 bytes"},
        "error": {"type": "string", "description": "why it was rejected, naming the field and what was "
                  "expected; it never repeats more than a short preview of the value"},
        "field": {"type": ["string", "null"]},
        "original": {"type": ["string", "null"], "description": "the payload as text when it is UTF-8 "
                     "(cut to UPSELL_DEAD_LETTER_MAX_BYTES of JSON when larger), else null"},
        "original_b64": {"type": ["string", "null"], "description": "the payload as base64 when it is not "
                         "UTF-8 (cut likewise), else null"},
        "original_size": {"type": "integer", "description": "the payload's whole size in bytes"},
        "original_sha256": {"type": "string", "description": "hex SHA-256 of the whole payload"},
        "truncated": {"type": "boolean", "description": "true when original / original_b64 is cut"},
    },
    "required": ["schema", "topic", "partition", "offset", "timestamp", "key", "error", "field",
                 "original", "original_b64", "original_size", "original_sha256", "truncated"],
    "additionalProperties": True,
}


# ------------------------------------------------------------ checking --
# The read model stores only decisions that match the published schema. The schemas above use a
# small part of JSON Schema (const, enum, type, required, date-time, nested objects); this checks
# exactly that part, so the schema and the check cannot drift apart without adding a dependency.

_JSON_TYPES = {"string": str, "integer": int, "object": dict, "array": list, "null": type(None), "boolean": bool}


def check(schema: dict, value, path: str = "") -> None:
    """Raise ValueError naming the field if `value` does not match `schema`."""
    from schemas.validate import describe      # here: validate imports nothing of outputs
    where = f"field '{path}': " if path else ""
    if "const" in schema and value != schema["const"]:
        raise ValueError(f"{where}expected {schema['const']!r}, got {describe(value)}")
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"{where}expected one of {', '.join(map(str, schema['enum']))}, got {describe(value)}")
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(isinstance(value, _JSON_TYPES[t]) and not (t == "integer" and isinstance(value, bool))
                   for t in types):
            raise ValueError(f"{where}expected {' or '.join(types)}, got {describe(value)}")
    if schema.get("format") == "date-time" and isinstance(value, str):
        from rules.timeutil import parse_ts
        parse_ts(value)
    if isinstance(value, dict) and "properties" in schema:
        for name in schema.get("required", ()):
            if name not in value:
                raise ValueError(f"field '{path + '.' if path else ''}{name}': missing")
        for name, sub in schema["properties"].items():
            if name in value:
                check(sub, value[name], f"{path}.{name}" if path else name)
