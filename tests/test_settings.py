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
