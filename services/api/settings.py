"""The API's own settings, read from the environment beside the shared `Settings`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import read_settings


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True,
                                      populate_by_name=True)

    host: str = Field("127.0.0.1", min_length=1, validation_alias="MODELREG_API_HOST")
    # 0 picks a free port (tests); the bound one is `ApiService.url`.
    port: int = Field(8080, ge=0, le=65535, validation_alias="MODELREG_API_PORT")
    # Reads (GET) without a token; false: every read needs a `reader` token or better.
    open_reads: bool = Field(True, validation_alias="MODELREG_API_OPEN_READS")
    # How long a presigned artifact download URL stays valid.
    presign_seconds: int = Field(900, ge=1, le=7 * 86_400, validation_alias="MODELREG_API_PRESIGN_SECONDS")


def load_api_settings(**overrides: object) -> ApiSettings:
    return read_settings(ApiSettings, **overrides)
