"""streams.transport.ConsumerOnAppLoop against the embedded broker: Faust's consumer service started and
stopped on the app's own loop, with no thread of its own, and nothing of it left running."""
from __future__ import annotations

import asyncio
import threading

from streams.transport import App, ConsumerOnAppLoop


async def test_the_in_loop_consumer_starts_and_stops_on_the_app_s_loop(broker):
    app = App("t-consumer-loop-int", broker=broker.url)
    app.loop = asyncio.get_running_loop()
    thread = app.consumer._thread
    assert type(thread) is ConsumerOnAppLoop
    before = set(asyncio.all_tasks())
    threads = set(threading.enumerate())
    await asyncio.wait_for(thread.start(), 30)
    try:
        assert thread._started.is_set() and thread._thread is None
        assert not set(threading.enumerate()) - threads             # no thread was made
        client = thread._ensure_consumer()
        assert client._loop is asyncio.get_running_loop()            # aiokafka's own tasks run here
        assert thread.method_queue._started.is_set()                 # the rebalance callbacks' queue
        topics = await thread.call_thread(client.topics)             # a request to the broker, in place
        assert isinstance(topics, set)
    finally:
        await asyncio.wait_for(thread.stop(), 30)
    assert thread._shutdown.is_set() and thread.method_queue._stopped.is_set()
    assert client._closed
    left = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert not left, left
