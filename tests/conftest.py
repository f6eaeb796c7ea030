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
