"""JSON Schemas of the output topics (proposals, proposals.suppressed, proposal-status, dead letters)."""
from __future__ import annotations

from rules.timeutil import parse_ts
from schemas.validate import describe

_TS = {"type": "string", "format": "date-time"}
_STR = {"type": "string"}
_NUM = {"type": "number"}
_INT = {"type": "integer"}
_STRS = {"type": "array", "items": {"type": "string"}}
_NUMS = {"type": "array", "items": {"type": "number"}}
_DATE = {"type": "string", "description": "a day, YYYY-MM-DD"}


def _obj(required: dict, optional: dict | None = None, doc: str = "") -> dict:
    """An object with these fields; further fields may be added (additive changes keep schema 1)."""
    out = {"type": "object", "properties": {**required, **(optional or {})}, "required": list(required)}
    return {**out, "description": doc} if doc else out


# Display names are optional: decisions written before they existed are still valid ones.
_PLAN = {"plan": {**_STR, "description": "the plan offered (the catalog's name)"}}
_PLAN_NAME = {"plan_name": {**_STR, "description": "its display name"}}
_SKUS = {"skus": {**_STRS, "description": "the SKUs offered"}}
_SKU_NAMES = {"sku_names": {**_STRS, "description": "their display names, in the order of skus"}}
_USAGE = {"metric": _STR, "value": _NUM, "limit": _NUM}


def _variant(trigger: str, kinds: list[str], offer, evidence) -> dict:
    """The shape of one trigger's decisions: `offer` and `evidence` one object schema or a list
    of alternatives."""
    def one_or_any(x):
        return {"anyOf": x} if isinstance(x, list) else x
    return {"properties": {"trigger": {"const": trigger}, "kind": {"enum": kinds},
                           "offer": one_or_any(offer), "evidence": one_or_any(evidence)}}


# One entry per trigger, told apart by `trigger`: what its offer and evidence hold.
BY_TRIGGER = [
    _variant("usage_limit", ["upsell"], _obj(_PLAN, _PLAN_NAME, doc="the next tier whose limit fits the usage"),
             _obj({**_USAGE, "level": {**_NUM, "description": "the share of the limit reached"}})),
    _variant("usage_forecast", ["upsell"], _obj(_PLAN, _PLAN_NAME, doc="the next tier whose limit fits the forecast"),
             _obj({**_USAGE, "days_to_limit": {**_NUM, "description": "days until the trend reaches the limit"}})),
    _variant("renewal", ["upsell", "downsell"],
             _obj(_PLAN, {**_PLAN_NAME, "term": {"enum": ["annual"]}, "discount_pct": _NUM},
                  doc="a tier up or down at renewal, or the annual term (term, discount_pct) on the same plan"),
             _obj({"renews_at": _TS, "term": _STR, "peak_utilisation": {"type": ["number", "null"]}})),
    _variant("fiscal_year_end", ["upsell"], _obj(_PLAN, _PLAN_NAME, doc="the next tier, before the customer's year ends"),
             _obj({"fiscal_year_end": _DATE, "fiscal_year_end_month": _INT})),
    _variant("purchase", ["cross_sell"], _obj(_SKUS, {**_SKU_NAMES, "bundle": {**_STR, "description": "the bundle they make"}}),
             _obj({"sku": {**_STR, "description": "the SKU bought"}, "related": _STRS, "relation": _STR})),
    _variant("co_purchase", ["cross_sell"], _obj(_SKUS, _SKU_NAMES),
             _obj({"sku": _STR, "related": _STRS, "support": _NUMS, "confidence": _NUMS})),
    _variant("underuse", ["downsell"], _obj(_PLAN, _PLAN_NAME, doc="the tier below, which fits the usage"),
             _obj({"latest_peak": _NUM, "low_since": _TS})),
    _variant("season", ["cross_sell"], _obj({"campaign": _STR, **_SKUS}, _SKU_NAMES),
             _obj({"campaign": _STR, "segment": _STR})),
    _variant("volume", ["upsell"],
             [_obj({"line": _STR, "add_amount": {**_NUM, "description": "to add to the order's amount"}}),
              _obj({"line": _STR, "sku": _STR, "add_qty": {**_INT, "description": "units to add"}}, {"sku_name": _STR})],
             [_obj({"line": _STR, "total": _NUM, "threshold": _NUM}),
              _obj({"line": _STR, "sku": _STR, "qty": _NUM, "threshold": _NUM})]),
]

PROPOSAL_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "upsell-engine/proposals.json",
    "title": "proposal (schema 1)",
    "type": "object",
    "properties": {
        "schema": {"const": 1, "description": "contract version; additive changes keep 1 (see $comment)"},
        "proposal_id": {"type": "string", "description":
                        "deterministic hash of (customer, trigger, offer, period): dedupe on it"},
        "customer_id": {"type": "string", "description": "also the record key"},
        "kind": {"enum": ["upsell", "cross_sell", "downsell"]},
        "trigger": {"enum": ["usage_limit", "usage_forecast", "renewal", "fiscal_year_end", "purchase",
                             "co_purchase", "underuse", "season", "volume"]},
        "offer": {"type": "object", "description": "what is offered; its shape per trigger is in oneOf"},
        "audience": {"enum": ["decision_maker", "admin", "user"]},
        "reason": {"type": "string", "description": "human text, for the message"},
        "evidence": {"type": "object", "description": "structured facts behind the reason; per trigger in oneOf"},
        "priority": {"type": "integer"},
        "created_at": {**_TS, "description": "event time of the decision, never wall-clock time"},
        "valid_until": _TS,
        "experiment": {**_STR, "description": "the offer test the offer is part of (absent outside one)"},
        "variant": {**_STR, "description": "the customer's variant in it"},
    },
    "required": ["schema", "proposal_id", "customer_id", "kind", "trigger", "offer", "audience",
                 "reason", "evidence", "priority", "created_at", "valid_until"],
    "oneOf": BY_TRIGGER,
    "additionalProperties": True,
    "$comment": "Additive changes (a new field, a new trigger, a new optional offer key) keep schema 1: "
                "consumers must ignore fields they do not know. Removing or renaming a field, or changing "
                "its type or meaning, makes schema 2 (docs/contract.md).",
}

SUPPRESSED_SCHEMA = {
    **PROPOSAL_SCHEMA,
    "$id": "upsell-engine/proposals.suppressed.json",
    "title": "suppressed proposal (schema 1)",
    "properties": {**PROPOSAL_SCHEMA["properties"], "suppressed": {
        "type": "object",
        "properties": {
            "reason": {"enum": ["cooldown", "unhappy_customer", "quiet_period", "outranked",
                                "min_gap", "frequency_cap", "holdout"]},
            "detail": {"type": "string"}},
        "required": ["reason", "detail"]}},
    "required": PROPOSAL_SCHEMA["required"] + ["suppressed"],
}

_MONEY = {**_NUM, "description": "in the catalog's prices (plan price per month)"}
_TRIGGERS = PROPOSAL_SCHEMA["properties"]["trigger"]

STATUS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "upsell-engine/proposal-status.json",
    "title": "proposal status (schema 1)",
    "type": "object",
    "properties": {
        "schema": {"const": 1, "description": "contract version; additive changes keep 1"},
        "status_id": {**_STR, "description": "deterministic hash of (proposal_id, status): dedupe on it"},
        "proposal_id": {**_STR, "description": "the decision this is about (proposals, or "
                        "proposals.suppressed with reason holdout)"},
        "customer_id": {**_STR, "description": "also the record key"},
        "trigger": _TRIGGERS,
        "kind": {"enum": ["upsell", "cross_sell", "downsell"]},
        "status": {"enum": ["converted", "declined", "expired", "withdrawn"], "description":
                   "converted within the attribution window (also after expired); declined by a "
                   "proposal-outcomes record; expired at valid_until; withdrawn when the offer stopped being "
                   "true (cancel what is queued)"},
        "at": {**_TS, "description": "event time of the transition, never wall-clock time"},
        "created_at": {**_TS, "description": "the decision's created_at"},
        "holdout": {"type": "boolean", "description": "a decision held out (never sent): measured, "
                    "never withdrawn or declined"},
        "experiment": {**_STR, "description": "the offer test, as on the proposal"},
        "variant": _STR,
        "via": {"enum": ["outcome", "observed"], "description": "converted: an accepted outcome, or the "
                "customer doing what was offered"},
        "revenue": _obj({}, {"mrr_before": _MONEY, "mrr_after": _MONEY, "expansion_mrr": {
            **_NUM, "description": "mrr_after - mrr_before; negative for a downsell (revenue kept)"},
            "order_value": {**_NUM, "description": "cross-sell and volume: the offered items' value"}},
            "converted: what it moved, from the catalog's prices"),
        "reason": {"enum": ["unhappy_customer", "renewal_passed", "contract_ended", "plan_changed"],
                   "description": "withdrawn: why the offer stopped being true"},
        "detail": {**_STR, "description": "withdrawn: the reason in words"},
    },
    "required": ["schema", "status_id", "proposal_id", "customer_id", "trigger", "kind", "status", "at",
                 "created_at", "holdout"],
    "oneOf": [
        {"properties": {"status": {"const": "converted"}}, "required": ["via", "revenue"]},
        {"properties": {"status": {"const": "withdrawn"}}, "required": ["reason", "detail"]},
        {"properties": {"status": {"enum": ["declined", "expired"]}}},
    ],
    "additionalProperties": True,
    "$comment": PROPOSAL_SCHEMA["$comment"],
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
# small part of JSON Schema (const, enum, type, required, date-time, nested objects, items, oneOf,
# anyOf); this checks
# exactly that part, so the schema and the check cannot drift apart without adding a dependency.

_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "object": dict, "array": list,
               "null": type(None), "boolean": bool}


def check(schema: dict, value, path: str = "") -> None:
    """Raise ValueError naming the field if `value` does not match `schema`."""
    if "const" in schema and value != schema["const"]:
        raise ValueError(f"{_where(path)}expected {schema['const']!r}, got {describe(value)}")
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"{_where(path)}expected one of {', '.join(map(str, schema['enum']))}, got {describe(value)}")
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(isinstance(value, _JSON_TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                   for t in types):
            raise ValueError(f"{_where(path)}expected {' or '.join(types)}, got {describe(value)}")
    if schema.get("format") == "date-time" and isinstance(value, str):
        parse_ts(value)
    if isinstance(value, dict) and "properties" in schema:
        for name in schema.get("required", ()):
            if name not in value:
                raise ValueError(f"field '{path + '.' if path else ''}{name}': missing")
        for name, sub in schema["properties"].items():
            if name in value:
                check(sub, value[name], f"{path}.{name}" if path else name)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check(schema["items"], item, f"{path}[{i}]")
    for keyword in ("oneOf", "anyOf"):
        if keyword in schema:
            _check_alternatives(schema[keyword], value, path, exactly_one=keyword == "oneOf")


def _where(path: str) -> str:
    return f"field '{path}': " if path else ""


def _picked(alt: dict, value) -> bool:
    """Whether `value` has the alternative's discriminating values: its fields with a const or an
    enum (trigger, status), those of them the value has."""
    if not isinstance(value, dict):
        return True
    for name, sub in alt.get("properties", {}).items():
        if name in value and (("const" in sub and value[name] != sub["const"])
                              or ("enum" in sub and value[name] not in sub["enum"])):
            return False
    return True


def _check_alternatives(alternatives: list, value, path: str, exactly_one: bool) -> None:
    """An alternative whose discriminating values the value does not have cannot match: it is
    checked (for its error) only when no other applies. The error of an alternative the value
    picks says best what is wrong; of several, the shortest, then the first."""
    errors, matched = [], 0       # errors: (length, index, message)
    for i, alt in enumerate(alternatives):
        if _picked(alt, value):
            try:
                check(alt, value, path)
                matched += 1
            except ValueError as exc:
                errors.append((len(str(exc)), i, str(exc)))
    if matched == 0:
        if not errors:            # none applies: each one's error, the shortest said
            for i, alt in enumerate(alternatives):
                try:
                    check(alt, value, path)
                except ValueError as exc:
                    errors.append((len(str(exc)), i, str(exc)))
        raise ValueError(min(errors)[2])
    if exactly_one and matched > 1:
        raise ValueError(f"field '{path or '(value)'}': matches {matched} alternatives, expected one")
