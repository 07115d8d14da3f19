"""Kafka's default partitioner (murmur2 of the key), shared by the backtest."""
from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_for(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def wrong_partition_error(partition: int, expected: int, partitions: int) -> str:
    """The dead letter's reason for a record on a partition its key does not hash to."""
    return (f"record on partition {partition}, but its key hashes to partition {expected} (murmur2 over "
            f"{partitions} partitions): produce with Kafka's default partitioner (librdkafka: "
            f"partitioner=murmur2_random)")
