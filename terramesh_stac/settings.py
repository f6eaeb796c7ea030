"""All configuration in one place: environment variables prefixed TERRAMESH_ (or a .env file)."""

import os
from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_state_dir() -> Path:
    # As root the cluster runs as the `postgres` user, which cannot enter /root: keep the
    # state somewhere it can reach.
    if os.geteuid() == 0:
        return Path("/var/lib/terramesh-stac")
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "terramesh-stac"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TERRAMESH_", env_file=".env", extra="ignore")

    # Embedded PostgreSQL/PostGIS cluster (`terramesh-stac db start`).
    state_dir: Path = _default_state_dir()
    db_host: str = "127.0.0.1"
    db_port: int = 5439
    db_name: str = "terramesh"
    # Use an external database instead of the embedded one (superuser/admin DSN).
    dsn: str | None = None

    # Conversion.
    collection_id: str = "terramesh"
    dest: str = "./terramesh-output"  # local folder or s3://bucket/prefix
    s3_endpoint_url: str | None = None  # S3-compatible endpoint, e.g. http://127.0.0.1:9000
    s3_public_url: str | None = None  # https base that serves the bucket, for asset alternates
    scheduler: str | None = None  # Dask scheduler address for `convert`; None: a LocalCluster

    # Service (`terramesh-stac serve`).
    host: str = "127.0.0.1"
    port: int = 8000
    enable_transactions: bool = False
    cors_origins: str = "*"  # comma-separated origins, or "*"
    # DSN the API and tile service connect with (pgstac_read role). Default: the database
    # module's API role DSN (terramesh_stac.catalog.api.api_dsn), else libpq's PG* environment variables;
    # never `dsn` itself (the admin).
    api_dsn: str | None = None
    db_pool_max_size: int = 5  # per service (STAC API, tiles)
    # DSN of the transaction endpoints' write pool (pgstac_ingest role), used only with
    # enable_transactions. Default: the database module's loader role DSN.
    write_dsn: str | None = None
    # Render preset used for the tile/preview links of items (else the collection's first).
    default_render: str | None = "true-color"  # preset of items' tile and preview links
    render_cache_ttl: float = 60.0  # seconds the collection's render presets are cached


@lru_cache
def get_settings() -> Settings:
    return Settings()
