"""The API's own settings, read from the environment beside the shared `Settings`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
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

    @field_validator("open_reads")
    @classmethod
    def _closed_in_production(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("environment") == "production":
            raise ValueError("open reads are refused with MODELREG_ENV=production: set it to false "
                             "(every read then needs a reader token)")
        return value


def load_api_settings(**overrides: object) -> ApiSettings:
    return read_settings(ApiSettings, **overrides)
