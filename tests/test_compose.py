"""docker-compose.yml is for machines with Docker; its structure is checked here."""
import os
import re
from pathlib import Path

import yaml

from streams.replay import TOPICS

ROOT = Path(__file__).resolve().parent.parent


def test_compose_structure():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    s = doc["services"]
    assert {"kafka", "redis", "create-topics", "worker-1", "worker-2"} <= set(s)
    env = s["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"                      # KRaft, no ZooKeeper
    assert "INTERNAL://kafka:29092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka:29092" in s["worker-1"]["environment"]["UPSELL_BROKER"]
    for svc in ("kafka", "redis", "worker-1", "worker-2"):
        assert "healthcheck" in s[svc], svc
    deps = s["worker-2"]["depends_on"]
    assert deps["kafka"]["condition"] == "service_healthy" and deps["redis"]["condition"] == "service_healthy"
    assert deps["create-topics"]["condition"] == "service_completed_successfully"
    script = s["create-topics"]["command"][0]
    partitions = s["worker-1"]["environment"]["UPSELL_PARTITIONS"]
    for t in TOPICS:                     # every topic a worker reads or writes
        assert f" {t} " in f" {script} ".replace(";", " "), t
    assert f"--partitions {partitions}" in script


def test_compose_publishes_on_localhost_and_protects_redis_and_http():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    s = doc["services"]
    for svc in ("kafka", "redis", "worker-1", "worker-2"):
        assert all(str(p).startswith("127.0.0.1:") for p in s[svc]["ports"]), svc
    assert "--requirepass" in s["redis"]["command"]
    env = s["worker-1"]["environment"]
    assert env["UPSELL_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")
    assert env["UPSELL_HTTP_TOKEN"]         # the worker binds 0.0.0.0 in its container: a token is required


def _defaults(value: str) -> str:
    """A compose value with each ${NAME:-default} replaced by its default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_compose_runs_as_users_run_it():
    """Data on volumes (Kafka's log, Redis, each worker's store), pinned images, restarts, and two
    workers of one app with a store and a port each."""
    s = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert s["kafka"]["environment"]["KAFKA_LOG_DIRS"] in [v.split(":")[1] for v in s["kafka"]["volumes"]]
    assert any(v.endswith(":/data") for v in s["redis"]["volumes"])
    for svc in ("kafka", "redis", "create-topics", "worker-1", "worker-2"):
        image = s[svc].get("image", "")
        assert re.search(r":\d+\.\d+\.\d+", image), f"{svc}: image {image!r} is not pinned to a version"
    for svc in ("kafka", "redis", "worker-1", "worker-2"):
        assert s[svc]["restart"] == "unless-stopped", svc
    one, two = s["worker-1"], s["worker-2"]
    assert one["environment"] == two["environment"]                 # one app, one consumer group
    assert one["volumes"] != two["volumes"] and one["ports"] != two["ports"]


def test_compose_settings_are_the_ones_the_worker_reads(monkeypatch):
    """Every UPSELL_* name in the compose file is one the worker reads, and together (defaults of
    the ${...} filled in) they pass the worker's start-up validation with the values meant."""
    from streams.settings import Settings
    s = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    env = {k: _defaults(v) for k, v in s["worker-1"]["environment"].items()}
    known = set(re.findall(r"UPSELL_[A-Z_0-9]+", (ROOT / "streams" / "settings.py").read_text()))
    assert set(env) <= known, sorted(set(env) - known)
    for name in [n for n in os.environ if n.startswith("UPSELL_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.partitions == 8 and settings.clock == "wall" and settings.http_token
    assert settings.web_port == 6066 and settings.broker == "kafka://kafka:29092"
    documented = "".join((ROOT / "docs" / f).read_text() for f in ("configuration.md", "production.md"))
    assert all(name in documented for name in env), [n for n in env if n not in documented]
