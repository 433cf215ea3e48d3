"""The API's own settings, read from the environment beside the shared `Settings`."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import read_settings


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True,
                                      populate_by_name=True)

    # The shared setting, read here too: production refuses open reads.
    environment: Literal["development", "production"] = Field("development", validation_alias="MODELREG_ENV")
    host: str = Field("127.0.0.1", min_length=1, validation_alias="MODELREG_API_HOST")
    # 0 picks a free port (tests); the bound one is `ApiService.url`.
    port: int = Field(8080, ge=0, le=65535, validation_alias="MODELREG_API_PORT")
    # Reads (GET) without a token; false: every read needs a `reader` token or better.
    open_reads: bool = Field(True, validation_alias="MODELREG_API_OPEN_READS")
    # How long a presigned artifact download URL stays valid.
    presign_seconds: int = Field(900, ge=1, le=7 * 86_400, validation_alias="MODELREG_API_PRESIGN_SECONDS")
    # The MLflow alias that is the production stage (services/api/mlflow): reading it gives the
    # champion, setting it asks the policy for a promotion.
    mlflow_champion_alias: str = Field("champion", pattern=r"^[A-Za-z0-9_-]{1,255}$",
                                       validation_alias="MODELREG_API_MLFLOW_CHAMPION_ALIAS")
    # The team's MLflow tracking server (services/api/mlflow/tracking.py): MLflow 3 registers a
    # logged model as `models:/m-ID`, whose files only that server can locate. Unset: such
    # sources are refused with what to do. The token, if it needs one, goes as a bearer token
    # (the caller's own token is never forwarded).
    mlflow_tracking_uri: str | None = Field(None, validation_alias="MODELREG_API_MLFLOW_TRACKING_URI")
    mlflow_tracking_token: SecretStr | None = Field(None, validation_alias="MODELREG_API_MLFLOW_TRACKING_TOKEN")

    @field_validator("mlflow_tracking_uri", "mlflow_tracking_token", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _tracking_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("expected the http(s):// URL of an MLflow tracking server")
        if parts.username or parts.password:
            raise ValueError("no credentials in the URL: set MODELREG_API_MLFLOW_TRACKING_TOKEN")
        return value.rstrip("/")

    @field_validator("open_reads")
    @classmethod
    def _closed_in_production(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("environment") == "production":
            raise ValueError("open reads are refused with MODELREG_ENV=production: set it to false "
                             "(every read then needs a reader token)")
        return value


def load_api_settings(**overrides: object) -> ApiSettings:
    return read_settings(ApiSettings, **overrides)
