"""Recorded streams: JSON Lines of {"topic", "key", "timestamp", "value"}, and optionally
"partition", the partition the record was produced to (a dump of Kafka topics has it; without
it, the partition Kafka's default partitioner gives the key).

`value` is normally the event object. A string `value` is taken as the raw
payload text, so a recording can carry malformed bytes verbatim (that is how
the golden scenarios exercise the dead-letter path).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import IO, Iterable, Iterator

import orjson

from rules.timeutil import parse_ts
from schemas.validate import ValidationError, validate


@dataclass(slots=True)
class RecordedEvent:
    line: int
    topic: str
    key: str | None
    ts: int
    text: bytes | None  # the payload given as text, or None: then `obj` is the payload
    obj: object = None  # the payload already parsed (a JSON value), or None when it was given as text
    partition: int | None = None    # the partition it was produced to, if the recording says

    @property
    def raw(self) -> bytes:
        """The payload as it goes on the wire (serialised when asked: the backtest never is)."""
        return self.text if self.text is not None else dumps(self.obj)


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    error: str


def open_stream(path: str) -> IO[bytes]:
    return sys.stdin.buffer if path == "-" else open(path, "rb")


def dumps(obj) -> bytes:
    """orjson.dumps as an exact-size copy, for bytes that are kept. orjson's own bytes keep its
    whole write buffer behind them (measured with tracemalloc: a 154-byte document held 4,098
    bytes, a 351-byte one 8,153): a worker's memory table of 100k customers took 1.15 GB, and a
    loaded recording about 4 kB per event."""
    return bytes(memoryview(orjson.dumps(obj)))


def read_recorded(lines: Iterable[bytes]) -> Iterator[RecordedEvent | BadLine]:
    return read_numbered(enumerate(lines, 1))


def read_numbered(numbered: Iterable[tuple[int, bytes]]) -> Iterator[RecordedEvent | BadLine]:
    """`read_recorded` of (line number, line) pairs: a part of a recording, numbered as a whole."""
    for n, line in numbered:
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield BadLine(n, f"not JSON: {exc}")
            continue
        if not isinstance(rec, dict) or not {"topic", "timestamp", "value"} <= rec.keys():
            yield BadLine(n, "expected an object with topic, key, timestamp and value")
            continue
        try:
            ts = parse_ts(rec["timestamp"])
        except ValueError as exc:
            yield BadLine(n, f"timestamp: {exc}")
            continue
        value = rec["value"]
        key, topic = rec.get("key"), rec["topic"]
        if not isinstance(topic, str) or not (key is None or isinstance(key, (str, int))):
            yield BadLine(n, "topic must be a string and key a string (or null)")
            continue
        if key is not None and not isinstance(key, str):
            key = str(key)
        partition = rec.get("partition")
        if partition is not None and (not isinstance(partition, int) or isinstance(partition, bool)
                                      or partition < 0):
            yield BadLine(n, "partition: expected a whole number >= 0")
            continue
        if isinstance(value, str):       # raw bytes as text, e.g. deliberately malformed JSON
            yield RecordedEvent(n, topic, key, ts, value.encode(), None, partition)
        else:
            yield RecordedEvent(n, topic, key, ts, None, value, partition)


def load_sorted(lines: Iterable[bytes], numbered: Iterable[tuple[int, bytes]] | None = None
                ) -> tuple[list[RecordedEvent], list[BadLine]]:
    """All events of a recording (or of `numbered` lines of one) in event-time order (stable for
    equal timestamps)."""
    events, bad = [], []
    for item in (read_numbered(numbered) if numbered is not None else read_recorded(lines)):
        (bad if isinstance(item, BadLine) else events).append(item)
    events.sort(key=lambda e: e.ts)
    return events, bad


def decode_event(topic: str, key: str | None, raw: bytes, plans=None, parsed=None) -> dict:
    """Bytes of an input record -> validated value; the worker and the backtest share it.
    `parsed` is the JSON value of `raw` when the caller already has it (a recording); `raw` is
    then not read."""
    if parsed is not None:
        value = parsed
    else:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValidationError(None, f"malformed JSON: {exc}") from None
    if key is None:
        raise ValidationError(None, "record has no key; key every record by customer_id")
    return validate(topic, value, key=key, plans=plans)


def dump_line(topic: str, key: str, ts_text: str, value) -> bytes:
    return orjson.dumps({"topic": topic, "key": key, "timestamp": ts_text, "value": value}) + b"\n"
