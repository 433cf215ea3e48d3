"""The API's settings: production never serves reads without a token."""

from __future__ import annotations

import pytest

from services.api.settings import load_api_settings
from shared.settings import SettingsError


def test_production_refuses_open_reads_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELREG_ENV", "production")
    monkeypatch.delenv("MODELREG_API_OPEN_READS", raising=False)
    with pytest.raises(SettingsError, match="^MODELREG_API_OPEN_READS: open reads are refused"):
        load_api_settings()
    monkeypatch.setenv("MODELREG_API_OPEN_READS", "false")
    assert load_api_settings().open_reads is False


def test_development_keeps_open_reads_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELREG_ENV", raising=False)
    monkeypatch.delenv("MODELREG_API_OPEN_READS", raising=False)
    assert load_api_settings().open_reads is True
