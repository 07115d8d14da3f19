"""Plain aiokafka helpers for tools outside the worker (replay, tail, tests)."""
from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


def bootstrap_of(broker_url: str) -> str:
    return ";".join(u.split("://", 1)[-1] for u in broker_url.split(";")).replace(";", ",")


async def ensure_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    """Create the co-partitioned topics if they do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
