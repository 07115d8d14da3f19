"""Settings read from the environment: what is accepted, and the message for what is not."""
from __future__ import annotations

import pytest

from streams.settings import Settings


def test_the_unsent_limit_is_in_mib_and_checked(monkeypatch):
    monkeypatch.delenv("UPSELL_MAX_UNSENT_MB", raising=False)
    assert Settings.from_env().max_unsent_mb == 16
    monkeypatch.setenv("UPSELL_MAX_UNSENT_MB", "64")
    assert Settings.from_env().max_unsent_mb == 64
    for bad in ("0", "-1", "0.5", "lots"):
        monkeypatch.setenv("UPSELL_MAX_UNSENT_MB", bad)
        with pytest.raises(ValueError, match=f"UPSELL_MAX_UNSENT_MB must be a whole number of MiB >= 1, got '{bad}'"):
            Settings.from_env()
