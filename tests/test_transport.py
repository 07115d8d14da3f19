"""streams.transport: the partitions Faust pauses (PausedInTheClient), the consumer on the app's loop
(ConsumerOnAppLoop), the worker without a spinner (WorkerWithoutSpinner)."""
from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import aiokafka
import pytest
from faust.types import TP

from streams.transport import App, ConsumerOnAppLoop, FetchWait, PausedInTheClient, _Consumer, consumer_runs_on


class Pausing:
    """Faust's side of `pause_partitions` / `resume_partitions`: the partitions it leaves out of
    the fetches it asks for."""

    def __init__(self):
        self.faust_paused: set = set()

    def pause_partitions(self, tps):
        self.faust_paused.update(tps)

    def resume_partitions(self, tps):
        self.faust_paused.difference_update(tps)


class ClientThread:
    """A consumer thread as Faust's: its own event loop in its own thread, holding the client."""

    def __init__(self, client):
        self._consumer = client
        self.thread_loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.thread_loop.run_forever, daemon=True)
        self.thread.start()

    def settled(self):
        """Waits until every call handed to the thread's loop so far has run (they run in order)."""
        done = threading.Event()
        self.thread_loop.call_soon_threadsafe(done.set)
        assert done.wait(5)

    def stop(self):
        self.thread_loop.call_soon_threadsafe(self.thread_loop.stop)
        self.thread.join(5)
        self.thread_loop.close()


class Consuming(PausedInTheClient, Pausing):
    pass


async def test_partitions_faust_pauses_are_paused_in_the_client_too():
    client = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")    # never started
    changelog, events = aiokafka.TopicPartition("x-changelog", 0), aiokafka.TopicPartition("events", 0)
    client.assign([changelog, events])
    consumer, thread = Consuming(), ClientThread(client)
    consumer._thread = thread
    try:
        # Faust's TP, and one the client does not have (it would raise in the client)
        consumer.pause_partitions({TP("x-changelog", 0), TP("other", 3)})
        thread.settled()
        assert client.paused() == {changelog}
        assert consumer.faust_paused == {TP("x-changelog", 0), TP("other", 3)}
        consumer.resume_partitions([TP("x-changelog", 0)])
        thread.settled()
        assert client.paused() == set() and consumer.faust_paused == {TP("other", 3)}
    finally:
        thread.stop()
        await client.stop()


def test_the_worker_consumer_pauses_in_the_client():
    assert issubclass(_Consumer, PausedInTheClient)


def test_pausing_before_the_client_exists_is_faust_s_alone():
    consumer = Consuming()
    consumer._thread = SimpleNamespace(_consumer=None)
    consumer.pause_partitions([TP("x-changelog", 0)])
    assert consumer.faust_paused == {TP("x-changelog", 0)}


async def test_pausing_after_the_client_thread_has_stopped_is_faust_s_alone():
    client = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
    consumer, thread = Consuming(), ClientThread(client)
    consumer._thread = thread
    thread.stop()                       # as at shutdown, when Faust pauses the whole assignment
    try:
        consumer.pause_partitions([TP("x-changelog", 0)])
        assert consumer.faust_paused == {TP("x-changelog", 0)}
    finally:
        await client.stop()


@pytest.mark.parametrize("in_thread", [False, True])
async def test_the_consumer_runs_on_the_app_s_loop_unless_asked_for_a_thread(in_thread):
    app = App("t-consumer", broker="kafka://127.0.0.1:9", consumer_thread=in_thread)
    loop = asyncio.get_running_loop()
    app.loop = loop
    thread = app.consumer._thread
    assert type(thread) is (FetchWait if in_thread else ConsumerOnAppLoop)
    assert (thread.thread_loop is loop) is not in_thread
    assert consumer_runs_on(app, loop) == ("thread" if in_thread else "loop")


async def test_the_in_loop_consumer_calls_in_place():
    app = App("t-consumer-loop", broker="kafka://127.0.0.1:9")
    app.loop = asyncio.get_running_loop()
    thread = app.consumer._thread
    here = threading.get_ident()

    async def coro(x):
        return (x, threading.get_ident())

    # what Faust's consumer asks of its thread, coroutine or plain function, runs in place
    assert await asyncio.wait_for(thread.call_thread(coro, 1), 5) == (1, here)
    assert await asyncio.wait_for(thread.call_thread(lambda x: (x, threading.get_ident()), 2), 5) == (2, here)
    done = asyncio.Event()

    async def cast():
        done.set()

    await thread.cast_thread(cast)
    await asyncio.wait_for(done.wait(), 5)


def test_the_worker_keeps_the_root_logger_at_the_level_it_was_started_with():
    """Faust's own worker, started at warn or above, lowers the root logger to DEBUG for its
    start-up spinner, for good: every debug call of aiokafka then builds a record. The app's
    worker class has no spinner. The second half fails once a Faust release stops doing that:
    then `WorkerWithoutSpinner` can go."""
    import logging

    import faust

    from streams.app import app
    from streams.transport import WorkerWithoutSpinner
    assert app.conf.Worker is WorkerWithoutSpinner
    root = logging.getLogger("upsell-test-root")
    root.addHandler(logging.NullHandler())
    root.setLevel(logging.WARNING)
    WorkerWithoutSpinner(app, loglevel="warn", quiet=True).on_setup_root_logger(root, logging.WARNING)
    assert root.level == logging.WARNING and len(root.handlers) == 1
    faust.Worker(app, loglevel="warn", quiet=True).on_setup_root_logger(root, logging.WARNING)
    assert root.level == logging.DEBUG, "faust-streaming no longer lowers the root logger: drop WorkerWithoutSpinner"
