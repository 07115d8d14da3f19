"""docker-compose.yml is for machines with Docker; its structure is checked here."""
from pathlib import Path

import yaml

from rules.engine import INPUT_TOPICS

ROOT = Path(__file__).resolve().parent.parent


def test_compose_structure():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    s = doc["services"]
    assert {"kafka", "redis", "create-topics", "worker"} <= set(s)
    env = s["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"                      # KRaft, no ZooKeeper
    assert "INTERNAL://kafka:29092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka:29092" in s["worker"]["environment"]["UPSELL_BROKER"]
    for svc in ("kafka", "redis", "worker"):
        assert "healthcheck" in s[svc], svc
    deps = s["worker"]["depends_on"]
    assert deps["kafka"]["condition"] == "service_healthy" and deps["redis"]["condition"] == "service_healthy"
    assert deps["create-topics"]["condition"] == "service_completed_successfully"
    script = s["create-topics"]["command"][0]
    partitions = s["worker"]["environment"]["UPSELL_PARTITIONS"]
    for t in (*INPUT_TOPICS, "repartition", "ticks", "proposals", "proposals.suppressed", "dead-letters"):
        assert t in script
    assert f"--partitions {partitions}" in script


def test_compose_publishes_on_localhost_and_protects_redis_and_http():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    s = doc["services"]
    for svc in ("kafka", "redis", "worker"):
        assert all(str(p).startswith("127.0.0.1:") for p in s[svc]["ports"]), svc
    assert "--requirepass" in s["redis"]["command"]
    env = s["worker"]["environment"]
    assert env["UPSELL_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")
    assert env["UPSELL_HTTP_TOKEN"]         # the worker binds 0.0.0.0 in its container: a token is required
