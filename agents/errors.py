"""Errors as a stream of their own: a record that cannot be read becomes a bounded dead letter
(`streams.deadletters`) on `dead-letters`, counted per source topic, and the stream moves on.
Shared by the ingest and the read model."""
from __future__ import annotations

from streams import deadletters
from streams import metrics
from streams import topics as T
from streams.app import settings


def dead_letter(topic: str, msg, ts_ms: int | None, error: str, field: str | None) -> bytes:
    """The bounded dead letter of `msg`, a Faust message or an aiokafka record (key, value,
    partition, offset), read from `topic` at record time `ts_ms` (ms)."""
    return deadletters.dead_letter(topic, msg.partition, msg.offset, ts_ms, msg.key, msg.value, error,
                                   field, settings.dead_letter_max_bytes)


async def send_dead_letter(topic: str, msg, ts_ms: int | None, exc: BaseException) -> None:
    """Count and send the dead letter of a record that could not be read (`exc` says why)."""
    metrics.dead_letters[topic] += 1
    error, field = deadletters.reason(exc)
    await T.dead_letters.send(key=deadletters.bounded_key(msg.key),
                              value=dead_letter(topic, msg, ts_ms, error, field))
