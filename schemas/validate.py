"""Explicit validation of input events.

`faust.Record(validation=True)` silently coerces (1.5 -> 1), so input is
checked here, field by field, against `SPECS` — the single source of truth
from which the JSON Schemas in docs/schemas/ are generated and which the
Faust records in `schemas.records` mirror (a test keeps the three in step).

`validate(topic, value, plans)` returns a normalised copy (known fields only,
timestamps as epoch ms) or raises `ValidationError` naming the field, the
value and what was expected, so a producer can act on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rules.timeutil import parse_ts

TRIGGERS = ("usage_limit", "usage_forecast", "renewal", "fiscal_year_end", "purchase",
            "co_purchase", "underuse", "season", "volume")


PREVIEW_CHARS = 32


def describe(value) -> str:
    """A short description of a JSON value for an error message: a scalar as itself (a string cut
    to PREVIEW_CHARS), a container by its size. Never recurses, never grows with the value."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        if len(value) <= PREVIEW_CHARS:
            return repr(value)
        return f"{value[:PREVIEW_CHARS]!r}... ({len(value)} characters)"
    if isinstance(value, int):
        return str(value) if -10**18 < value < 10**18 else "an integer of more than 18 digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return f"an array of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object of {len(value)} key(s)"
    return f"a value of type {type(value).__name__}"


# Bounds on what an event may carry into a customer's state: every string and array of an input
# event is at most this long, so one record cannot make a state document too large to write.
MAX_STRING = 1024      # characters
MAX_ITEMS = 1000       # array items


class ValidationError(ValueError):
    def __init__(self, field: str | None, message: str):
        self.field = field
        super().__init__(f"field '{field}': {message}" if field else message)


# A record's event time (its Kafka timestamp, a recording's "timestamp"), epoch ms. Outside this
# range it is a producer's mistake, not an event: no timestamp (Kafka's -1), seconds or
# microseconds sent as milliseconds. Applied, it would move its partition's stream time by
# centuries: every timer on the way fires (a usage sample dated 9000-01-02 gave 146,487
# proposals), and past the year 9999 the date arithmetic raises: a backtest stopped with a
# ValueError, and the worker's handler raised on the record, which is never acknowledged, so
# it would be read again after a restart.
EVENT_TIME_MIN = 0                      # 1970-01-01T00:00:00Z
EVENT_TIME_END = 4_102_444_800_000      # 2100-01-01T00:00:00Z, excluded


def event_time_ok(ms: int) -> bool:
    return EVENT_TIME_MIN <= ms < EVENT_TIME_END


def check_event_time(ms: int) -> None:
    if not event_time_ok(ms):
        raise ValidationError(None, f"record timestamp {ms} ms is outside 1970-01-01 .. 2100-01-01 "
                                    "(no timestamp, or seconds or microseconds given as milliseconds?)")


@dataclass(frozen=True)
class F:
    name: str
    type: str                        # string | integer | number | object | array | timestamp
    required: bool = True
    enum: tuple | None = None
    min: float | None = None         # inclusive
    exclusive_min: float | None = None
    max: float | None = None
    items: tuple | None = None       # fields of array items (objects)
    min_items: int = 0
    doc: str = ""


CUSTOMER_ID = F("customer_id", "string", doc="the customer; must equal the record key")

SPECS: dict[str, tuple[F, ...]] = {
    "customers": (
        CUSTOMER_ID,
        F("segment", "string", required=False, enum=("b2b", "b2c"),
          doc="business or consumer customer (profiles are upserts: absent fields keep their value)"),
        F("plan", "string", required=False, doc="current SaaS plan (a plan of the rules file), if any"),
        F("signup_at", "timestamp", required=False, doc="when the customer signed up (quiet period)"),
        F("fiscal_year_end_month", "integer", required=False, min=1, max=12,
          doc="B2B: month in which the fiscal year ends (3 = March)"),
        F("name", "string", required=False),
    ),
    "purchases": (
        CUSTOMER_ID,
        F("order_id", "string"),
        F("items", "array", min_items=1, items=(
            F("sku", "string"),
            F("qty", "integer", min=1),
            F("price", "number", required=False, min=0, doc="unit price"),
        )),
        F("total", "number", required=False, min=0, doc="order total; default sum(qty * price)"),
        F("currency", "string", required=False),
    ),
    "usage": (
        CUSTOMER_ID,
        F("metric", "string", doc="e.g. seats, storage_gb, api_calls"),
        F("value", "number", min=0, doc="current usage in this billing period"),
        F("limit", "number", required=False, exclusive_min=0, doc="limit; default: the plan's limit"),
    ),
    "contracts": (
        CUSTOMER_ID,
        F("plan", "string"),
        F("term", "string", enum=("monthly", "annual")),
        F("renews_at", "timestamp"),
        F("started_at", "timestamp", required=False),
    ),
    "feedback": (
        CUSTOMER_ID,
        F("type", "string", enum=("nps", "ticket", "churn_intent")),
        F("score", "integer", required=False, min=0, max=10, doc="NPS score, required for type nps"),
        F("ticket_id", "string", required=False, doc="required for type ticket"),
        F("severity", "string", required=False, enum=("low", "medium", "high"), doc="required for type ticket"),
        F("status", "string", required=False, enum=("open", "closed"), doc="required for type ticket"),
        F("comment", "string", required=False),
    ),
    "proposal-outcomes": (
        CUSTOMER_ID,
        F("proposal_id", "string"),
        F("trigger", "string", enum=TRIGGERS, doc="echo of the proposal's trigger"),
        F("offer", "object", doc="echo of the proposal's offer"),
        F("outcome", "string", enum=("accepted", "declined", "ignored")),
    ),
}

_TYPE_TEXT = {"string": "a string", "integer": "an integer", "number": "a number",
              "object": "an object", "array": "an array",
              "timestamp": "an ISO-8601 timestamp string like 2026-04-01T09:00:00Z"}


def _check_field(f: F, value: Any, path: str) -> Any:
    t = f.type
    if t == "string":
        if not isinstance(value, str) or not value:
            raise ValidationError(path, f"expected a non-empty string, got {describe(value)}")
        if len(value) > MAX_STRING:
            raise ValidationError(path, f"expected at most {MAX_STRING} characters, got {len(value)}")
    elif t == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationError(path, f"expected an integer, got {describe(value)}")
    elif t == "number":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise ValidationError(path, f"expected a number, got {describe(value)}")
    elif t == "object":
        if not isinstance(value, dict):
            raise ValidationError(path, f"expected an object, got {describe(value)}")
        _check_flat(value, path)
    elif t == "timestamp":
        try:
            return parse_ts(value)
        except ValueError as exc:
            raise ValidationError(path, str(exc)) from None
    elif t == "array":
        if not isinstance(value, list):
            raise ValidationError(path, f"expected an array, got {describe(value)}")
        if len(value) < f.min_items:
            raise ValidationError(path, f"expected at least {f.min_items} item(s), got {len(value)}")
        if len(value) > MAX_ITEMS:
            raise ValidationError(path, f"expected at most {MAX_ITEMS} items, got {len(value)}")
        return [_check_object(f.items, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if f.enum is not None and value not in f.enum:
        raise ValidationError(path, f"expected one of {', '.join(f.enum)}, got {describe(value)}")
    if f.min is not None and value < f.min:
        raise ValidationError(path, f"expected a value >= {f.min:g}, got {describe(value)}")
    if f.exclusive_min is not None and value <= f.exclusive_min:
        raise ValidationError(path, f"expected a value > {f.exclusive_min:g}, got {describe(value)}")
    if f.max is not None and value > f.max:
        raise ValidationError(path, f"expected a value <= {f.max:g}, got {describe(value)}")
    return value


MAX_KEYS = 32      # keys of an object field (an offer echoed back)


def _check_flat(value: dict, path: str) -> None:
    """An object field (an offer echoed in proposal-outcomes) is flat and small: at most MAX_KEYS
    keys, each a scalar or an array of scalars, every string within MAX_STRING."""
    if len(value) > MAX_KEYS:
        raise ValidationError(path, f"expected at most {MAX_KEYS} keys, got {len(value)}")
    for k, v in value.items():
        if len(k) > MAX_STRING:
            raise ValidationError(path, f"expected keys of at most {MAX_STRING} characters")
        items = v if isinstance(v, list) else (v,)
        if len(items) > MAX_ITEMS:
            raise ValidationError(f"{path}.{k[:40]}", f"expected at most {MAX_ITEMS} items, got {len(items)}")
        for x in items:
            if isinstance(x, (dict, list)):
                raise ValidationError(f"{path}.{k[:40]}", f"expected a scalar or an array of scalars, got {describe(x)}")
            if isinstance(x, str) and len(x) > MAX_STRING:
                raise ValidationError(f"{path}.{k[:40]}", f"expected at most {MAX_STRING} characters, got {len(x)}")


def _check_object(fields: tuple[F, ...], value: Any, path: str = "") -> dict:
    if not isinstance(value, dict):
        raise ValidationError(path or None, f"expected a JSON object, got {type(value).__name__}")
    out = {}
    for f in fields:
        name = f"{path}.{f.name}" if path else f.name
        v = value.get(f.name)
        if v is None:
            if f.required:
                raise ValidationError(name, f"missing; expected {_TYPE_TEXT[f.type]}")
            continue
        out[f.name] = _check_field(f, v, name)
    return out


# ------------------------------------------------------------ compiled --
# `_check_object` walks the spec for every event. The hot path runs a function compiled once per
# topic instead: each field gets an inline test that accepts what is plainly valid (exact types,
# bounds, enums); anything else goes to `_check_field`, which normalises it or raises the error,
# so the messages and the results are the interpreter's own (`tests/test_engine.py` checks both
# agree on valid and invalid values).

def _accept(f: F, c: str) -> str | None:
    """Python text of a test that `v` is plainly valid for `f`, or None: always check it slowly.
    `c` names the field's constants in the compiled function's namespace."""
    if f.type == "string":
        test = ["v.__class__ is str", "v != ''", f"len(v) <= {MAX_STRING}"]
    elif f.type == "integer":
        test = ["v.__class__ is int"]
    elif f.type == "number":
        test = ["(v.__class__ is int or (v.__class__ is float and v == v))"]
    elif f.type == "object":       # checked by `_check_flat`, off the hot path
        return None
    else:                           # timestamps and arrays: see `_compile_object`
        return None
    if f.enum is not None:
        test.append(f"v in {c}_enum")
    if f.min is not None:
        test.append(f"v >= {c}_min")
    if f.exclusive_min is not None:
        test.append(f"v > {c}_xmin")
    if f.max is not None:
        test.append(f"v <= {c}_max")
    return " and ".join(test)


def _compile_object(fields: tuple[F, ...], name: str) -> Callable[[Any], dict]:
    ns: dict[str, Any] = {"ValidationError": ValidationError, "_check_field": _check_field,
                          "_TYPE_TEXT": _TYPE_TEXT, "parse_ts": parse_ts}
    lines = [f"def {name}(value):",
             "    if value.__class__ is not dict and not isinstance(value, dict):",
             "        raise ValidationError(None, f'expected a JSON object, got {type(value).__name__}')",
             "    out = {}",
             "    get = value.get"]
    for i, f in enumerate(fields):
        c = f"f{i}"
        ns[c], ns[f"{c}_enum"], ns[f"{c}_min"], ns[f"{c}_xmin"], ns[f"{c}_max"] = (
            f, frozenset(f.enum or ()), f.min, f.exclusive_min, f.max)
        slow = f"_check_field({c}, v, {f.name!r})"
        lines.append(f"    v = get({f.name!r})")
        if f.required:
            lines += ["    if v is None:",
                      f"        raise ValidationError({f.name!r}, 'missing; expected ' + _TYPE_TEXT[{f.type!r}])"]
        else:
            lines += ["    if v is None:", "        pass"]
        test = _accept(f, c)
        if f.type == "timestamp":
            lines += ["    else:", "        try:", f"            out[{f.name!r}] = parse_ts(v)",
                      "        except (ValueError, TypeError):", f"            out[{f.name!r}] = {slow}"]
        elif f.type == "array":     # items compiled too; an error is raised with its path
            ns[f"{c}_item"] = _compile_object(f.items, f"{name}_{f.name}_item")
            lines += [f"    elif v.__class__ is list and {f.min_items} <= len(v) <= {MAX_ITEMS}:", "        try:",
                      f"            out[{f.name!r}] = [{c}_item(x) for x in v]",
                      "        except ValidationError:", f"            out[{f.name!r}] = {slow}",
                      "    else:", f"        out[{f.name!r}] = {slow}"]
        elif test is None:
            lines += ["    else:", f"        out[{f.name!r}] = {slow}"]
        else:
            lines += [f"    elif {test}:", f"        out[{f.name!r}] = v",
                      "    else:", f"        out[{f.name!r}] = {slow}"]
    lines.append("    return out")
    exec(compile("\n".join(lines), f"<validate {name}>", "exec"), ns)   # noqa: S102 (our own text)
    return ns[name]


def _feedback(v: dict) -> None:
    if v["type"] == "nps" and "score" not in v:
        raise ValidationError("score", "missing; an nps event needs a score from 0 to 10")
    if v["type"] == "ticket":
        for name in ("ticket_id", "severity", "status"):
            if name not in v:
                raise ValidationError(name, "missing; a ticket event needs ticket_id, severity and status")


CHECKS: dict[str, Callable[[dict], None]] = {"feedback": _feedback}
COMPILED: dict[str, Callable[[Any], dict]] = {
    topic: _compile_object(fields, "check_" + topic.replace("-", "_")) for topic, fields in SPECS.items()}


def validate(topic: str, value: Any, key: str | None = None, plans=None) -> dict:
    """Check one event value of an input topic; returns the normalised value."""
    check = COMPILED.get(topic)
    if check is None:
        raise ValidationError(None, f"unknown topic {describe(topic)}; expected one of {', '.join(SPECS)}")
    out = check(value)
    extra = CHECKS.get(topic)
    if extra:
        extra(out)
    if key is not None and key != out["customer_id"]:
        raise ValidationError("customer_id", f"must equal the record key {describe(key)} (topics are "
                                             f"partitioned by customer_id), got {describe(out['customer_id'])}")
    if plans is not None and out.get("plan") is not None and out["plan"] not in plans:
        raise ValidationError("plan", f"unknown plan {describe(out['plan'])}; the rules file knows "
                                      f"{', '.join(plans)}")
    return out


# ------------------------------------------------------------ JSON Schema --

def _field_schema(f: F) -> dict:
    if f.type == "timestamp":
        s: dict = {"type": "string", "format": "date-time"}
    elif f.type == "array":
        s = {"type": "array", "items": _object_schema(f.items), "minItems": f.min_items, "maxItems": MAX_ITEMS}
    elif f.type == "string":
        s = {"type": "string", "minLength": 1, "maxLength": MAX_STRING}
    else:
        s = {"type": f.type}
    if f.enum is not None:
        s["enum"] = list(f.enum)
    if f.min is not None:
        s["minimum"] = f.min
    if f.exclusive_min is not None:
        s["exclusiveMinimum"] = f.exclusive_min
    if f.max is not None:
        s["maximum"] = f.max
    if f.doc:
        s["description"] = f.doc
    return s


def _object_schema(fields: tuple[F, ...]) -> dict:
    return {"type": "object",
            "properties": {f.name: _field_schema(f) for f in fields},
            "required": [f.name for f in fields if f.required],
            "additionalProperties": True}


def json_schema(topic: str) -> dict:
    s = {"$schema": "https://json-schema.org/draft/2020-12/schema",
         "$id": f"upsell-engine/{topic}.json", "title": f"{topic} event"}
    s.update(_object_schema(SPECS[topic]))
    if topic == "feedback":
        s["allOf"] = [
            {"if": {"properties": {"type": {"const": "nps"}}}, "then": {"required": ["score"]}},
            {"if": {"properties": {"type": {"const": "ticket"}}},
             "then": {"required": ["ticket_id", "severity", "status"]}},
        ]
    return s
