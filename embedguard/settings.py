"""Settings from ``EMBEDGUARD_*`` environment variables and an optional
``embedguard.toml`` (current directory, or the file named by EMBEDGUARD_CONFIG).

Precedence: command-line options > environment > embedguard.toml > defaults.
The Kafka SASL password comes only from EMBEDGUARD_KAFKA_SASL_PASSWORD (never
a URL) and is held as a SecretStr by the Kafka log.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["ReplayTarget", "Settings", "get_settings"]


def _config_file() -> Path:
    return Path(os.environ.get("EMBEDGUARD_CONFIG", "embedguard.toml"))


class ReplayTarget(BaseModel):
    """A place ``embedguard replay`` may send recorded requests to
    (``[[targets]]`` in embedguard.toml)."""

    name: str
    url: str
    #: writes and deletes are never replayed against a production target
    production: bool = True
    #: environment variable holding the credential sent to the target (never the value)
    credential_env: str | None = None
    credential_header: str = "Authorization"
    credential_scheme: str = "Bearer"
    #: a dev OIDC issuer that may mint tokens for recorded identities
    #: (``--as-recorded-identity``; staging gateways only)
    dev_issuer: str | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"target url {v!r} must start with http:// or https://")
        return v.rstrip("/")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDGUARD_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Where embedded state lives")
    log: str | None = Field(
        default=None, description="Event log URL: sqlite:PATH or kafka://HOST:PORT"
    )
    warehouse: str | None = Field(
        default=None, description="Warehouse URL: lake:DIR or clickhouse://..."
    )
    schema_registry: str | None = Field(
        default=None,
        description="Confluent schema registry URL; without it events use single-object encoding",
    )
    gateway_id: str | None = None
    targets: list[ReplayTarget] = Field(
        default_factory=list, description="Replay targets; production ones refuse writes"
    )

    @field_validator("log")
    @classmethod
    def _log_url(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("sqlite:") or v.startswith("kafka://")):
            raise ValueError(f"EMBEDGUARD_LOG={v!r} must be sqlite:PATH or kafka://HOST:PORT")
        return v

    @field_validator("warehouse")
    @classmethod
    def _wh_url(cls, v: str | None) -> str | None:
        if v is not None and not (
            v.startswith("lake:") or v.startswith("clickhouse://") or v.startswith("clickhouses://")
        ):
            raise ValueError(f"EMBEDGUARD_WAREHOUSE={v!r} must be lake:DIR or clickhouse://...")
        return v

    @property
    def log_url(self) -> str:
        return self.log or f"sqlite:{self.data_dir / 'events.db'}"

    @property
    def warehouse_url(self) -> str:
        return self.warehouse or f"lake:{self.data_dir / 'lake'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_config_file()),
            file_secret_settings,
        )


def get_settings() -> Settings:
    return Settings()
