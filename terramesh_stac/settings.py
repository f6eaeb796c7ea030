"""The command line's settings: environment variables prefixed TERRAMESH_ (or a .env file).

Read once, by the command line (`get_settings`), and passed down: the catalog's settings
(database, service: `terramesh_stac.catalog.settings`) plus what a conversion needs.
No module below the command line reads the environment itself.
"""

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from terramesh_stac.catalog.settings import ServiceSettings, default_state_dir


def _state_dir() -> Path:
    if os.geteuid() != 0 and os.environ.get("XDG_STATE_HOME"):
        return Path(os.environ["XDG_STATE_HOME"]) / "terramesh-stac"
    return default_state_dir()


LIBPQ_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE")


class Settings(ServiceSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TERRAMESH_", env_file=".env", extra="ignore")

    state_dir: Path = Field(default_factory=_state_dir)
    # S3-compatible endpoint (MinIO, moto ...); AWS's own AWS_ENDPOINT_URL is honoured too
    s3_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("TERRAMESH_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "s3_endpoint_url")
    )
    # Conversion (`terramesh-stac convert`).
    s3_public_url: str | None = None  # https base that serves the bucket, for asset alternates
    scheduler: str | None = None  # Dask scheduler address for `convert`; None: a LocalCluster
    subsets_dir: Path | None = None  # `terramesh-stac subset`'s manifests; None: <state_dir>/subsets
    libpq_env: dict[str, str] = Field(default_factory=lambda: {k: v for k in LIBPQ_ENV if (v := os.environ.get(k))})


@lru_cache
def get_settings() -> Settings:
    return Settings()
