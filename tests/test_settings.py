"""Settings read from the environment: what is accepted, and the message for what is not."""
from __future__ import annotations

import pytest

from streams.settings import Settings


@pytest.mark.parametrize("name, field, default, unit", [
    ("UPSELL_CLOCK_RESOLUTION_MS", "clock_resolution_ms", 5, "milliseconds"),
    ("UPSELL_MAX_UNSENT_MB", "max_unsent_mb", 16, "MiB"),
])
def test_whole_number_settings_are_checked(monkeypatch, name, field, default, unit):
    monkeypatch.delenv(name, raising=False)
    assert getattr(Settings.from_env(), field) == default
    monkeypatch.setenv(name, "2")
    assert getattr(Settings.from_env(), field) == 2
    for bad in ("0", "-3", "1.5", "soon"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=f"{name} must be a whole number of {unit} >= 1, got '{bad}'"):
            Settings.from_env()



@pytest.mark.parametrize("name, value, says", [
    ("UPSELL_PARTITIONS", "abc", "UPSELL_PARTITIONS must be a whole number of partitions from 1 to 10000, got 'abc'"),
    ("UPSELL_PARTITIONS", "0", "UPSELL_PARTITIONS must be a whole number"),
    ("UPSELL_LATENESS_MS", "-5000", "UPSELL_LATENESS_MS must be a whole number of milliseconds >= 0, got '-5000'"),
    ("UPSELL_REDIS_URL", "garbage", "UPSELL_REDIS_URL must be a URL like redis://host:port, got 'garbage'"),
    ("UPSELL_BROKER", "localhost:9092", "UPSELL_BROKER must be a URL like kafka://host:port"),
    ("UPSELL_KAFKA_SECURITY_PROTOCOL", "TLS", "UPSELL_KAFKA_SECURITY_PROTOCOL must be 'PLAINTEXT' or"),
    ("UPSELL_KAFKA_SSL_CAFILE", "/no/such/ca.pem", "UPSELL_KAFKA_SSL_CAFILE must name a readable file"),
    ("UPSELL_DEAD_LETTER_MAX_BYTES", "10", "from 1024 to 524288"),
    ("UPSELL_OFFSETS_BACKWARDS", "ignore", "UPSELL_OFFSETS_BACKWARDS must be 'stop' or 'reapply', got 'ignore'"),
    ("UPSELL_WRONG_PARTITION", "apply", "UPSELL_WRONG_PARTITION must be 'repartition' or 'dead-letter'"),
    ("UPSELL_MAX_AHEAD_MS", "10", "UPSELL_MAX_AHEAD_MS must be a whole number of milliseconds >= 1000"),
    ("UPSELL_MAX_AHEAD_MS", "1500", "UPSELL_MAX_AHEAD_MS=1500 must be more than UPSELL_LATENESS_MS=2000"),
])
def test_a_wrong_setting_is_named_with_its_value(monkeypatch, name, value, says):
    from streams.settings import SettingsError
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        Settings.from_env()
    assert says in str(err.value)


def test_sasl_needs_credentials_and_secrets_stay_out_of_the_text(monkeypatch):
    from streams.settings import SettingsError
    monkeypatch.setenv("UPSELL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SettingsError, match="needs UPSELL_KAFKA_SASL_USERNAME"):
        Settings.from_env()
    monkeypatch.setenv("UPSELL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("UPSELL_KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("UPSELL_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("UPSELL_REDIS_URL", "rediss://u:redispw@cache:6380/0")
    s = Settings.from_env()
    kw = s.kafka.client_kwargs()
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["ssl_context"] is not None and kw["sasl_plain_password"] == "hunter2"
    creds = s.kafka.faust_credentials()
    assert creds.mechanism.value == "SCRAM-SHA-512" and creds.protocol.value == "SASL_SSL"
    assert "hunter2" not in repr(s) and "redispw" not in repr(s)
    assert s.redis_url_redacted == "rediss://u:***@cache:6380/0"


def test_a_public_web_host_needs_a_token(monkeypatch):
    from streams.settings import SettingsError
    monkeypatch.setenv("UPSELL_WEB_HOST", "0.0.0.0")
    with pytest.raises(SettingsError, match="set UPSELL_HTTP_TOKEN"):
        Settings.from_env()
    monkeypatch.setenv("UPSELL_HTTP_TOKEN", "t")
    assert Settings.from_env().http_token == "t"


def test_the_full_collection_interval_is_seconds_at_least_zero(monkeypatch):
    name = "UPSELL_FULL_GC_INTERVAL"
    monkeypatch.delenv(name, raising=False)
    assert Settings.from_env().full_gc_interval == 60.0
    for good, seconds in (("0", 0.0), ("2.5", 2.5)):
        monkeypatch.setenv(name, good)
        assert Settings.from_env().full_gc_interval == seconds
    for bad in ("-1", "soon", "nan", "inf"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=f"{name} must be a number of seconds >= 0, got '{bad}'"):
            Settings.from_env()
