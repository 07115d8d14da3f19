"""Every private name of faust-streaming, mode and aiokafka the worker relies on
(`streams/transport.py`, `streams/inbox.py`, `streams/topics.py`, `agents/web.py`) still exists.
A failure names the package and the version to re-check; docs/upgrading.md says how."""
from __future__ import annotations

import inspect
from importlib.metadata import version

import aiokafka
import faust.streams
import faust.transport.conductor
import faust.transport.consumer
import faust.transport.producer
import mode
import mode.threads
import pytest
from faust.transport.drivers import aiokafka as driver

# (package, owner, name): a class attribute, or an attribute its methods set on `self`
PRIVATE = [
    ("faust-streaming", faust.transport.conductor.Conductor, "_build_handler"),
    ("faust-streaming", driver.Consumer, "_wait_next_records"),
    ("faust-streaming", driver.Consumer, "_read_offset"),
    ("faust-streaming", driver.Consumer, "_add_gap"),
    ("faust-streaming", driver.Consumer, "_n_acked"),
    ("faust-streaming", driver.Consumer, "_commit_every"),
    ("faust-streaming", driver.Consumer, "_buffered_partitions"),
    ("faust-streaming", driver.Consumer, "_to_message"),
    ("faust-streaming", driver.Consumer, "_thread"),
    ("faust-streaming", driver.Consumer, "_new_consumer_thread"),
    ("faust-streaming", driver.AIOKafkaConsumerThread, "_create_worker_consumer"),
    ("faust-streaming", driver.AIOKafkaConsumerThread, "_highwaters"),
    ("faust-streaming", driver.AIOKafkaConsumerThread, "_ensure_consumer"),
    ("faust-streaming", driver.AIOKafkaConsumerThread, "_consumer"),
    ("faust-streaming", driver.Producer, "_ensure_producer"),
    ("faust-streaming", faust.streams, "_current_event"),
    ("faust-streaming", driver, "server_list"),
    ("faust-streaming", driver, "credentials_to_aiokafka_auth"),
    ("mode-streaming", mode.Service, "_default_start"),
    ("mode-streaming", mode.Service, "_default_stop_children"),
    ("mode-streaming", mode.Service, "_default_stop_futures"),
    ("mode-streaming", mode.Service, "_default_stop_exit_stacks"),
    ("mode-streaming", mode.Service, "_stopped"),
    ("mode-streaming", mode.Service, "_shutdown"),
    ("mode-streaming", mode.Service, "_started"),
    ("mode-streaming", mode.threads.ServiceThread, "_thread_started"),
    ("mode-streaming", mode.threads.ServiceThread, "on_thread_started"),
    ("mode-streaming", mode.threads.ServiceThread, "on_thread_stop"),
    ("aiokafka", aiokafka.AIOKafkaConsumer, "_fetch_max_wait_ms"),
    ("aiokafka", aiokafka.AIOKafkaConsumer, "_client"),
]


def _has(owner, name: str) -> bool:
    if hasattr(owner, name):
        return True
    if inspect.isclass(owner):      # set in a method: `self.<name> =` in the class or a base
        for cls in owner.__mro__:
            try:
                source = inspect.getsource(cls)
            except (OSError, TypeError):
                continue
            if f"self.{name} =" in source or f"self.{name}:" in source:
                return True
    return False


def _version(package: str) -> str:
    return version(package)


@pytest.mark.parametrize("package, owner, name", PRIVATE,
                         ids=[f"{getattr(o, '__name__', o)}.{n}" for _, o, n in PRIVATE])
def test_a_private_name_the_worker_relies_on_is_still_there(package, owner, name):
    assert _has(owner, name), (
        f"{getattr(owner, '__module__', '')}.{getattr(owner, '__qualname__', owner)}.{name} is gone in "
        f"{package} {_version(package)}: re-check streams/transport.py (and docs/upgrading.md) before "
        f"moving its pin in pyproject.toml")
