"""The embedded services' start-up (`streams/embedded.py`): a service that does not come up is
stopped before the error is raised, so a failed start leaves no process behind."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from streams.embedded import Service, free_port


def running_with(marker: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:      # ended meanwhile
            pass
    return pids


def test_a_service_that_does_not_open_its_port_in_time_is_stopped():
    marker = f"never-listens-{uuid.uuid4().hex}"
    argv = [sys.executable, "-c", "import time, sys; time.sleep(60)", marker]
    with pytest.raises(RuntimeError, match="did not open port"):
        Service(argv, free_port(), "a sleeper", None, timeout=0.5)
    assert running_with(marker) == []


def test_a_service_that_exits_at_start_says_so():
    with pytest.raises(RuntimeError, match="exited with code 3"):
        Service([sys.executable, "-c", "raise SystemExit(3)"], free_port(), "a quitter", None)
