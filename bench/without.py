"""`upsell worker` with adaptations of streams/transport.py turned off, for bench/adaptations.py.

    BENCH_WITHOUT=FetchWait,PausedInTheClient python bench/without.py worker -l warn
    (`+` joins names as `,` does: bench/adaptations.py runs "a+b" as one variant)

Each name switches one adaptation back to the framework's own behaviour (`WITHOUT`), before the
app module is imported; anything else runs as `upsell worker` does.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams import transport as t  # noqa: E402


def _set_env(name: str, value: str):
    return lambda: os.environ.__setitem__(name, value)


async def _nothing(*_args) -> None:
    return None


WITHOUT = {
    "FetchWait": lambda: delattr(t.FetchWait, "_create_worker_consumer"),
    "PausedInTheClient": lambda: setattr(t.PausedInTheClient, "_in_client", lambda *_args: None),
    "InboxFetch": lambda: delattr(t.InboxFetch, "_wait_next_records"),
    "ConsumerOnAppLoop": _set_env("UPSELL_CONSUMER_THREAD", "1"),
    "freeze_startup_heap": lambda: setattr(t, "freeze_startup_heap", _nothing),
    "full_collections": _set_env("UPSELL_FULL_GC_INTERVAL", "0"),
    "WorkerWithoutSpinner": lambda: setattr(t.WorkerWithoutSpinner, "__init__", t.faust.Worker.__init__),
}

if __name__ == "__main__":
    for name in filter(None, os.environ.get("BENCH_WITHOUT", "").replace("+", ",").split(",")):
        WITHOUT[name]()
    from streams.cli import main
    main()
