"""Shared pytest fixtures: each section belongs to the module it serves."""


# --- pgstac database (catalog/database.py) ------------------------------------------------

import dataclasses as _dataclasses
import os as _os
import shutil as _shutil
import socket as _socket
import tempfile as _tempfile

import pytest as _pytest


@_dataclasses.dataclass(frozen=True)
class PgstacTestDB:
    """A running embedded pgstac cluster: its Settings and one DSN per role."""

    settings: object  # terramesh_stac.settings.Settings
    admin: str  # superuser DSN
    loader: str  # member of pgstac_ingest
    api: str  # member of pgstac_read


def _free_port() -> int:
    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@_pytest.fixture(scope="session")
def pgstac_db():
    """Session-wide embedded PostgreSQL + PostGIS + pgstac on a free port, removed at the end.

    The state dir is a fresh 0755 folder under /tmp, not tmp_path_factory: pytest's base
    temp dir is mode 700, which the `postgres` user (who runs the cluster when we are root)
    cannot enter.
    """
    from catalog import database
    from terramesh_stac.settings import Settings

    state = _tempfile.mkdtemp(prefix="terramesh-pgstac-", dir="/tmp")
    _os.chmod(state, 0o755)
    settings = Settings(state_dir=state, db_port=_free_port(), dsn=None, _env_file=None)
    try:
        database.start(settings)
        yield PgstacTestDB(
            settings=settings,
            admin=database.dsn(settings, "admin"),
            loader=database.dsn(settings, "loader"),
            api=database.dsn(settings, "api"),
        )
    finally:
        try:
            database.stop(settings)
        finally:
            _shutil.rmtree(state, ignore_errors=True)


# --- S3-compatible server (moto standalone, real HTTP on 127.0.0.1) -------------------------


@_pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free local port; yields its endpoint URL. Fake credentials are
    put in the environment for the session (botocore/s3fs refuse to sign without any)."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with _pytest.MonkeyPatch.context() as mp:
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            mp.setenv(name, value)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()
