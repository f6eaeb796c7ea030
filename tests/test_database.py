"""terramesh_stac.catalog.database on a real embedded PostgreSQL + PostGIS + pgstac cluster (fixture pgstac_db)."""

import os
import stat

import psycopg
import pytest
from psycopg.types.json import Jsonb

from terramesh_stac.catalog import database
from terramesh_stac.catalog.queryables import QUERYABLES

COLLECTION = {
    "type": "Collection",
    "stac_version": "1.1.0",
    "id": "terramesh-test-db",
    "description": "test",
    "license": "CC-BY-4.0",
    "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [["2020-01-01T00:00:00Z", None]]}},
    "links": [],
}


def test_start_is_idempotent(pgstac_db):
    before = database.status(pgstac_db.settings)
    database.start(pgstac_db.settings)
    after = database.status(pgstac_db.settings)
    assert after["running"] and after["pid"] == before["pid"]
    assert database.dsn(pgstac_db.settings, "api") == pgstac_db.api  # passwords kept


def test_status_reports_running(pgstac_db):
    info = database.status(pgstac_db.settings)
    assert info["mode"] == "embedded"
    assert info["running"] and info["reachable"]
    assert info["pgstac_version"].startswith("0.10")
    assert info["port"] == pgstac_db.settings.db_port


def test_dsn_roles_and_credentials_file(pgstac_db):
    for role, user in (("admin", "postgres"), ("loader", "terramesh_loader"), ("api", "terramesh_api")):
        dsn = database.dsn(pgstac_db.settings, role)
        assert dsn.startswith(f"postgresql://{user}:")
        assert f"@127.0.0.1:{pgstac_db.settings.db_port}/terramesh" in dsn
    mode = stat.S_IMODE(os.stat(database.credentials_file(pgstac_db.settings)).st_mode)
    assert mode == 0o600
    with pytest.raises(ValueError):
        database.dsn(pgstac_db.settings, "root")  # type: ignore[arg-type]


def test_password_required(pgstac_db):
    s = pgstac_db.settings
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://terramesh_api:wrong@127.0.0.1:{s.db_port}/terramesh").close()


def test_api_role_searches_but_cannot_write(pgstac_db):
    with psycopg.connect(pgstac_db.api, autocommit=True) as conn:
        assert conn.execute(
            "SELECT 1 FROM pg_roles r WHERE pg_has_role(current_user, 'pgstac_read', 'member')"
        ).fetchone()
        result = conn.execute("SELECT * FROM pgstac.search('{}')").fetchone()[0]
        assert result["type"] == "FeatureCollection"
        # A filtered search writes pgstac's caches (searches, search_wheres): allowed.
        conn.execute(
            "SELECT * FROM pgstac.search(%s)",
            (Jsonb({"filter": {"op": "=", "args": [{"property": "terramesh:split"}, "val"]}}),),
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO pgstac.collections (content) VALUES (%s)", (Jsonb(COLLECTION),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT pgstac.create_collection(%s)", (Jsonb(COLLECTION),))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM pgstac.items")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO pgstac.items (id, collection) VALUES ('x', 'y')")


def test_pgstac_settings_for_the_api(pgstac_db):
    with psycopg.connect(pgstac_db.api) as conn:
        rows = dict(conn.execute("SELECT name, value FROM pgstac.pgstac_settings").fetchall())
    assert rows["context"] == "auto"


def test_prepare_collection_sets_partitioning_and_queryables(pgstac_db):
    with psycopg.connect(pgstac_db.loader, autocommit=True) as conn:
        conn.execute("SELECT pgstac.upsert_collection(%s)", (Jsonb(COLLECTION),))
        database.prepare_collection(conn, COLLECTION["id"], partition="year")
        database.prepare_collection(conn, COLLECTION["id"], partition="year")  # idempotent
        trunc = conn.execute(
            "SELECT partition_trunc FROM pgstac.collections WHERE id = %s", (COLLECTION["id"],)
        ).fetchone()[0]
        assert trunc == "year"
        rows = conn.execute(
            "SELECT name, property_index_type FROM pgstac.queryables WHERE %s = ANY(collection_ids)",
            (COLLECTION["id"],),
        ).fetchall()
        assert dict(rows) == {name: index for name, (_, index) in QUERYABLES.items()}
        props = conn.execute("SELECT pgstac.get_queryables(%s::text)", (COLLECTION["id"],)).fetchone()[0]
        assert set(QUERYABLES) <= set(props["properties"])
        with pytest.raises(database.DatabaseError):
            database.prepare_collection(conn, "no-such-collection")
        conn.execute("SELECT pgstac.delete_collection(%s)", (COLLECTION["id"],))


def test_postgis_is_there(pgstac_db):
    assert database.postgis_installed(database.pg_bin_dir())
    with psycopg.connect(pgstac_db.admin) as conn:
        assert conn.execute("SELECT postgis_version()").fetchone()[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="the postgres-user reachability check applies when root")
def test_unreachable_state_dir_is_a_clear_error(tmp_path):
    from terramesh_stac.settings import Settings

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    settings = Settings(state_dir=locked / "state", db_port=1, dsn=None, _env_file=None)
    with pytest.raises(database.DatabaseError, match="cannot reach"):
        database.start(settings)


def test_start_on_another_port_while_running_is_refused(pgstac_db):
    other = pgstac_db.settings.model_copy(update={"db_port": pgstac_db.settings.db_port + 1})
    with pytest.raises(database.DatabaseError, match="already runs on port"):
        database.start(other)
