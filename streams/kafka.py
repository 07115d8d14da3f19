"""Plain aiokafka helpers for everything outside Faust's own clients (read model, replay, tail,
demo, the start-up checks): the connection settings in one place."""
from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.settings import KafkaSecurity


def bootstrap_of(broker_url: str) -> str:
    return ";".join(u.split("://", 1)[-1] for u in broker_url.split(";")).replace(";", ",")


def client_kwargs(bootstrap: str, security: KafkaSecurity | None = None) -> dict:
    """The keyword arguments every aiokafka client of the project is made with."""
    return {"bootstrap_servers": bootstrap, **(security or KafkaSecurity()).client_kwargs()}


async def ensure_topics(bootstrap: str, names: list[str], partitions: int,
                        security: KafkaSecurity | None = None, replication: int = 1) -> None:
    """Create the co-partitioned topics if they do not exist yet."""
    admin = AIOKafkaAdminClient(**client_kwargs(bootstrap, security))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        new = [NewTopic(n, partitions, replication) for n in names if n not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


async def partition_counts(bootstrap: str, names: list[str], security: KafkaSecurity | None = None) -> dict:
    """topic -> its partition count, for those of `names` that exist."""
    admin = AIOKafkaAdminClient(**client_kwargs(bootstrap, security))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        wanted = [n for n in names if n in existing]
        if not wanted:
            return {}
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(wanted)
                if not t.get("error_code")}
    finally:
        await admin.close()


def copartition_problem(counts: dict[str, int], partitions: int) -> str | None:
    """None if every existing topic of `counts` has `partitions` partitions, else one line that
    says which differ and what to do."""
    wrong = {t: n for t, n in sorted(counts.items()) if n != partitions}
    if not wrong:
        return None
    listed = ", ".join(f"{t} has {n}" for t, n in wrong.items())
    return (f"UPSELL_PARTITIONS={partitions} but {listed}: every input topic, the repartition topic and the "
            f"changelog must have the same partition count (set UPSELL_PARTITIONS to the topics' count, "
            f"or re-create the topics)")


async def latest_timestamp(bootstrap: str, counts: dict[str, int], security: KafkaSecurity | None = None,
                           timeout_ms: int = 2000) -> int | None:
    """The latest record timestamp at the end of the topics of `counts` (topic -> partition count),
    or None if they hold nothing: read from each partition's last offset (with a broker that
    reports an end offset early, from its last batch)."""
    consumer = AIOKafkaConsumer(**client_kwargs(bootstrap, security), enable_auto_commit=False)
    try:
        await consumer.start()
        tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        consumer.assign(tps)
        ends = {tp: end for tp, end in (await consumer.end_offsets(tps)).items() if end}
        if not ends:
            return None
        for tp, end in ends.items():
            consumer.seek(tp, end - 1)
        latest, left = None, set(ends)
        while left:
            got = await consumer.getmany(*left, timeout_ms=timeout_ms)
            if not got:
                break
            for tp, records in got.items():
                latest = max(latest or 0, *(r.timestamp for r in records))
                left.discard(tp)
        return latest
    finally:
        await consumer.stop()
