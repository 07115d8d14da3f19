"""Dead letters: a rejected record, why, and its bytes, in a record of bounded size.

Shared by the worker's ingest, the read model and the backtest, so that the same bytes give the
same reason everywhere. Nothing here raises on any input: a record that cannot even be described
still becomes a dead letter.

Size: the original payload is kept up to `max_bytes` (UPSELL_DEAD_LETTER_MAX_BYTES, default
64 KiB) of encoded JSON; a longer one is cut there, and `original_size`, `original_sha256` and
`truncated` say what it was. The key is kept up to KEY_MAX_BYTES, the error text up to
ERROR_MAX_CHARS. A dead letter therefore stays far below a producer's 1 MB request limit, however
large the record it stands for.
"""
from __future__ import annotations

import base64
import hashlib

import orjson

from rules.timeutil import format_ts
from schemas.validate import event_time_ok

SCHEMA = 2
DEFAULT_MAX_BYTES = 64 * 1024
MAX_BYTES_RANGE = (1024, 512 * 1024)    # what the setting accepts
KEY_MAX_BYTES = 1024
ERROR_MAX_CHARS = 1000
FIELD_MAX_CHARS = 200


def reason(exc: BaseException) -> tuple[str, str | None]:
    """(error text, field) for an exception raised while reading a record: a validation error's
    own text and field; anything else by its type, since its text may repeat the record."""
    try:
        if isinstance(exc, (ValueError, UnicodeError)):    # ValidationError is a ValueError
            text = str(exc)
        else:
            text = f"unreadable record ({type(exc).__name__})"
    except Exception:       # noqa: BLE001 -- describing the error must not fail in turn
        text = f"unreadable record ({type(exc).__name__})"
    field = getattr(exc, "field", None)
    return _cut(text, ERROR_MAX_CHARS), (_cut(field, FIELD_MAX_CHARS) if isinstance(field, str) else None)


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most] + "..."


def bounded_key(key: bytes | None) -> bytes | None:
    """The record key a dead letter is sent with: the original's, cut to KEY_MAX_BYTES."""
    return key if key is None or len(key) <= KEY_MAX_BYTES else key[:KEY_MAX_BYTES]


def _text_within(text: str, most: int) -> str:
    """The longest prefix of `text` whose JSON encoding takes at most `most` bytes (escapes can
    make a character take six)."""
    if len(orjson.dumps(text)) <= most:
        return text
    lo, hi = 0, min(len(text), most)
    while lo < hi:          # binary search on the prefix length
        mid = (lo + hi + 1) // 2
        if len(orjson.dumps(text[:mid])) <= most:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def dead_letter(topic: str, partition: int | None, offset: int | None, ts_ms: int | None,
                key: bytes | None, value: bytes | None, error: str, field: str | None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The dead letter (JSON bytes, schema 2) of a record read from `topic` (without the prefix).

    `original` holds the payload as text when it is UTF-8, else `original_b64` holds it as
    base64; either is cut to `max_bytes` of encoded JSON (`truncated`), and `original_size` and
    `original_sha256` describe the whole payload."""
    raw = value if value is not None else b""
    text = b64 = None
    try:
        whole = raw.decode("utf-8")
    except UnicodeDecodeError:
        whole = None
    if whole is not None:
        text = _text_within(whole, max_bytes)
        truncated = len(text) < len(whole)
    else:
        part = raw[: max_bytes * 3 // 4]
        b64 = base64.b64encode(part).decode("ascii")
        truncated = len(part) < len(raw)
    key_text = None
    if key is not None:
        key_text = bounded_key(key).decode("utf-8", "replace")
    timestamp = format_ts(ts_ms) if ts_ms is not None and event_time_ok(ts_ms) else None
    return orjson.dumps({
        "schema": SCHEMA, "topic": topic, "partition": partition, "offset": offset,
        "timestamp": timestamp, "key": key_text, "error": _cut(error, ERROR_MAX_CHARS),
        "field": _cut(field, FIELD_MAX_CHARS) if field is not None else None,
        "original": text, "original_b64": b64, "original_size": len(raw),
        "original_sha256": hashlib.sha256(raw).hexdigest(), "truncated": truncated,
    })


def original_bytes(letter: dict) -> bytes:
    """The payload a dead letter keeps (all of it unless `truncated`), as bytes."""
    if letter.get("original_b64") is not None:
        return base64.b64decode(letter["original_b64"])
    return (letter.get("original") or "").encode("utf-8")
