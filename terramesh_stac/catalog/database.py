"""The pgstac database: an embedded PostgreSQL + PostGIS cluster, its roles and its DSNs.

`start` brings a cluster up in `settings.state_dir / "postgres"` (or, with `settings.dsn`, uses
an external database and starts nothing), installs pgstac and creates two login users:

- loader (`terramesh_loader`), a member of `pgstac_ingest`: writes items and collections;
- api (`terramesh_api`), a member of `pgstac_read`: reads, and writes only pgstac's search
  caches (`searches`, `search_wheres`, `format_item_cache`), never items or collections.

Every connection authenticates with a password (scram-sha-256), over TCP on
`settings.db_host:settings.db_port` or the unix socket in the state dir. The generated
passwords live in `credentials.json` (mode 0600) next to the cluster.

As root the cluster runs as the `postgres` system user (initdb refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from terramesh_stac.catalog.settings import DatabaseSettings

Role = Literal["admin", "loader", "api"]

ADMIN_USER = "postgres"
ROLE_USERS: dict[str, str] = {"loader": "terramesh_loader", "api": "terramesh_api"}
ROLE_GROUPS: dict[str, str] = {"loader": "pgstac_ingest", "api": "pgstac_read"}

# pgstac_settings for our API: `numberMatched` exact for small results, estimated above
# these thresholds (pgstac's "auto" context), cached for a day.
PGSTAC_SETTINGS: dict[str, str] = {
    "context": "auto",
    "context_estimated_count": "100000",
    "context_estimated_cost": "100000",
    "context_stats_ttl": "1 day",
}

SYSTEM_USER = "postgres"  # who runs the cluster when we are root

# A fresh bulk load is faster when a partition's queryable indexes (pgstac's expression
# indexes, one SQL function call per row each) are built after its rows are in, not kept up
# row by row: catalog/bulk.py drops them from a partition that is still empty and has pgstac
# rebuild them (maintain_partitions) when the load finishes. Partitions belong to pgstac_admin,
# so the drop runs as its owner, and only on an empty leaf partition of pgstac.items, only on
# indexes that are neither unique nor part of a partitioned index (id, datetime, geometry stay).
# Each such partition is recorded in terramesh.deferred_indexes until its indexes are back, so
# the next load rebuilds them when one was killed before it finished.
DEFER_INDEXES_SQL = (
    "CREATE SCHEMA IF NOT EXISTS terramesh",
    "ALTER SCHEMA terramesh OWNER TO pgstac_admin",
    "CREATE TABLE IF NOT EXISTS terramesh.deferred_indexes (partition text PRIMARY KEY, collection text NOT NULL)",
    """CREATE OR REPLACE FUNCTION terramesh.defer_queryable_indexes(_partition text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgstac AS $$
DECLARE
    rel regclass := to_regclass(format('pgstac.%I', _partition));
    idx regclass;
    has_rows boolean;
    dropped integer := 0;
BEGIN
    IF rel IS NULL OR NOT EXISTS (
        SELECT 1 FROM pg_partition_ancestors(rel) a WHERE a.relid = 'pgstac.items'::regclass
    ) OR EXISTS (SELECT 1 FROM pg_partition_tree(rel) t WHERE t.relid = rel AND NOT t.isleaf) THEN
        RAISE EXCEPTION '% is not a leaf partition of pgstac.items', _partition
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', rel) INTO has_rows;
    IF has_rows THEN
        RETURN 0;  -- searches may be using them: kept
    END IF;
    FOR idx IN
        SELECT i.indexrelid::regclass FROM pg_index i
        WHERE i.indrelid = rel AND NOT i.indisunique
          AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
    LOOP
        EXECUTE format('DROP INDEX %s', idx);
        dropped := dropped + 1;
    END LOOP;
    IF dropped > 0 THEN
        INSERT INTO terramesh.deferred_indexes (partition, collection)
        SELECT _partition, p.collection FROM pgstac.partitions p WHERE p.partition = _partition
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN dropped;
END $$""",
    "ALTER TABLE terramesh.deferred_indexes OWNER TO pgstac_admin",
    "GRANT SELECT, DELETE ON terramesh.deferred_indexes TO pgstac_ingest",
    "ALTER FUNCTION terramesh.defer_queryable_indexes(text) OWNER TO pgstac_admin",
    "REVOKE ALL ON FUNCTION terramesh.defer_queryable_indexes(text) FROM PUBLIC",
    "GRANT USAGE ON SCHEMA terramesh TO pgstac_ingest",
    "GRANT EXECUTE ON FUNCTION terramesh.defer_queryable_indexes(text) TO pgstac_ingest",
)


class DatabaseError(RuntimeError):
    """The database cannot be set up or reached; the message says what to do."""


# --- where things are -------------------------------------------------------------------


def cluster_dir(settings: DatabaseSettings) -> Path:
    return Path(settings.state_dir) / "postgres"


def data_dir(settings: DatabaseSettings) -> Path:
    return cluster_dir(settings) / "data"


def log_file(settings: DatabaseSettings) -> Path:
    return cluster_dir(settings) / "postgres.log"


def credentials_file(settings: DatabaseSettings) -> Path:
    return cluster_dir(settings) / "credentials.json"


def _is_root() -> bool:
    return os.geteuid() == 0


def pg_bin_dir() -> Path:
    """The newest PostgreSQL server bin dir: /usr/lib/postgresql/*/bin, else `pg_config --bindir`."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()]
    if found:
        return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and Path(out, "initdb").exists():
            return Path(out)
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent  # type: ignore[arg-type]
    raise DatabaseError(
        "PostgreSQL server not found (no /usr/lib/postgresql/*/bin/initdb, no pg_config). "
        "Install it, e.g. `apt-get install postgresql`, or set TERRAMESH_DSN to an external database."
    )


def pg_major(bindir: Path) -> int:
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    if not m:
        raise DatabaseError(f"cannot read the PostgreSQL version from {bindir / 'postgres'}: {out!r}")
    return int(m.group(1))


def _extension_dirs(bindir: Path, major: int) -> list[Path]:
    dirs = [
        Path(f"/usr/share/postgresql/{major}/extension"),
        bindir.parent / "share" / "extension",
        bindir.parent / "share" / "postgresql" / "extension",
    ]
    pg_config = bindir / "pg_config"
    if pg_config.exists():
        share = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True).stdout.strip()
        if share:
            dirs.append(Path(share) / "extension")
    return dirs


def postgis_installed(bindir: Path) -> bool:
    major = pg_major(bindir)
    return any((d / "postgis.control").exists() for d in _extension_dirs(bindir, major))


def ensure_postgis(bindir: Path) -> None:
    """Install PostGIS for this server with apt-get when we can (root); else say what to install."""
    if postgis_installed(bindir):
        return
    package = f"postgresql-{pg_major(bindir)}-postgis-3"
    apt = shutil.which("apt-get")
    if not (_is_root() and apt):
        raise DatabaseError(
            f"PostGIS is not installed for PostgreSQL in {bindir}. Install the package {package} "
            f"(e.g. `sudo apt-get install -y {package}`) and run again."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [apt, "install", "-y", "--no-install-recommends", package]
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run([apt, "update"], env=env)
        if subprocess.run(cmd, env=env).returncode != 0:
            raise DatabaseError(f"`apt-get install -y {package}` failed; install PostGIS for PostgreSQL {bindir}.")
    if not postgis_installed(bindir):
        raise DatabaseError(f"{package} was installed but postgis.control is still missing for {bindir}.")


# --- running things as the cluster's owner ----------------------------------------------


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *cmd] if _is_root() else cmd


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_as_owner(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise DatabaseError(f"{what} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _give_to_owner(path: Path, mode: int) -> None:
    os.chmod(path, mode)
    if _is_root():
        pw = pwd.getpwnam(SYSTEM_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _prepare_dirs(settings: DatabaseSettings) -> None:
    """Create the cluster dir, owned by the cluster's user, and check that user can reach it."""
    if _is_root():
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise DatabaseError(
                f"running as root needs the `{SYSTEM_USER}` system user to run PostgreSQL (initdb refuses "
                "root); install the Debian postgresql package or run as a normal user."
            ) from None
    cdir = cluster_dir(settings)
    for parent in reversed(cdir.parents):  # folders we create are made traversable (0755)
        if not parent.exists():
            parent.mkdir()
            os.chmod(parent, 0o755)
    cdir.mkdir(exist_ok=True)
    _give_to_owner(cdir, 0o700)
    if _is_root():
        # Every parent must be traversable by the postgres user.
        probe = subprocess.run(["runuser", "-u", SYSTEM_USER, "--", "test", "-w", str(cdir)])
        if probe.returncode != 0:
            blocked = [
                str(p)
                for p in reversed(cdir.parents)
                if subprocess.run(["runuser", "-u", SYSTEM_USER, "--", "test", "-x", str(p)]).returncode
            ]
            raise DatabaseError(
                f"the `{SYSTEM_USER}` user cannot reach {cdir}"
                + (f" (no search permission on {blocked[0]})" if blocked else "")
                + ". Set TERRAMESH_STATE_DIR to a folder it can reach (e.g. /var/lib/terramesh-stac) "
                "or make its parents traversable (chmod o+x)."
            )


def _write_config(settings: DatabaseSettings) -> None:
    """Our settings, rewritten at each start and included by postgresql.conf."""
    conf = data_dir(settings) / "terramesh.conf"
    conf.write_text(
        "# Written by terramesh-stac (catalog/database.py) at each start.\n"
        f"listen_addresses = '{settings.db_host}'\n"
        f"port = {int(settings.db_port)}\n"
        f"unix_socket_directories = '{cluster_dir(settings)}'\n"
        "password_encryption = 'scram-sha-256'\n"
    )
    _give_to_owner(conf, 0o600)
    main_conf = data_dir(settings) / "postgresql.conf"
    text = main_conf.read_text()
    if "include_if_exists = 'terramesh.conf'" not in text:
        main_conf.write_text(text + "\ninclude_if_exists = 'terramesh.conf'\n")


# --- credentials ------------------------------------------------------------------------


def _credentials(settings: DatabaseSettings, create: bool = False) -> dict[str, str]:
    path = credentials_file(settings)
    if path.exists():
        return json.loads(path.read_text())
    if not create:
        raise DatabaseError(f"no credentials at {path}: run `terramesh-stac db start` first.")
    creds = {role: secrets.token_urlsafe(24) for role in ("admin", "loader", "api")}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)
    return creds


def _url(user: str, password: str | None, host: str, port: int | str, dbname: str) -> str:
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    return f"postgresql://{auth}@{host}:{port}/{quote(dbname, safe='')}"


def dsn(settings: DatabaseSettings, role: Role = "loader") -> str:
    """postgresql://user:pw@host:port/db for `role` (admin, loader or api)."""
    if role not in ("admin", "loader", "api"):
        raise ValueError(f"role must be admin, loader or api, not {role!r}")
    if settings.dsn:
        if role == "admin":
            return settings.dsn
        ext = conninfo_to_dict(settings.dsn)
        return _url(
            ROLE_USERS[role],
            _credentials(settings)[role],
            ext.get("host") or "localhost",
            ext.get("port") or 5432,
            ext.get("dbname") or settings.db_name,
        )
    creds = _credentials(settings)
    user = ADMIN_USER if role == "admin" else ROLE_USERS[role]
    return _url(user, creds[role], settings.db_host, settings.db_port, settings.db_name)


# --- lifecycle --------------------------------------------------------------------------


def _pg_ctl_status(settings: DatabaseSettings, bindir: Path) -> int:
    if not (data_dir(settings) / "PG_VERSION").exists():
        return 4
    return subprocess.run(
        _as_owner([str(bindir / "pg_ctl"), "status", "-D", str(data_dir(settings))]), capture_output=True
    ).returncode


def _running_port(settings: DatabaseSettings) -> int | None:
    """The port in postmaster.pid (its 4th line), when the cluster runs."""
    try:
        return int((data_dir(settings) / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, IndexError, ValueError):
        return None


def _initdb(settings: DatabaseSettings, bindir: Path, admin_password: str) -> None:
    pwfile = cluster_dir(settings) / ".initdb-pw"
    pwfile.write_text(admin_password + "\n")
    _give_to_owner(pwfile, 0o600)
    try:
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data_dir(settings)),
                "-U",
                ADMIN_USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
            "initdb",
        )
    finally:
        pwfile.unlink(missing_ok=True)


def start(settings: DatabaseSettings) -> None:
    """Start (or reuse) the cluster and bring database, pgstac, roles and settings up to date.

    Idempotent. With `settings.dsn` set, nothing is started: the external database is set up.
    """
    if not settings.dsn:
        bindir = pg_bin_dir()
        ensure_postgis(bindir)
        _prepare_dirs(settings)
        initialized = (data_dir(settings) / "PG_VERSION").exists()
        if initialized and not credentials_file(settings).exists():
            raise DatabaseError(
                f"{data_dir(settings)} exists but {credentials_file(settings)} is gone: the passwords "
                f"are lost. Remove {cluster_dir(settings)} to start afresh (its data goes with it)."
            )
        creds = _credentials(settings, create=True)
        if not initialized:
            _initdb(settings, bindir, creds["admin"])
        if _pg_ctl_status(settings, bindir) != 0:
            _write_config(settings)
            log = log_file(settings)
            log.touch()
            _give_to_owner(log, 0o600)
            try:
                _run(
                    [str(bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data_dir(settings)), "-l", str(log)],
                    "pg_ctl start",
                )
            except DatabaseError as e:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
                raise DatabaseError(f"{e}\nlast lines of {log}:\n{tail}") from None
        else:
            running_port = _running_port(settings)
            if running_port is not None and running_port != int(settings.db_port):
                raise DatabaseError(
                    f"the cluster in {data_dir(settings)} already runs on port {running_port}, not "
                    f"{settings.db_port}: `terramesh-stac db stop` first, or set TERRAMESH_DB_PORT={running_port}."
                )
        _create_database(settings)
    else:
        # External database: the generated users' passwords are still kept in the state dir.
        cluster_dir(settings).mkdir(parents=True, exist_ok=True)
        _credentials(settings, create=True)
    bootstrap(settings)


def _create_database(settings: DatabaseSettings) -> None:
    server = _url(ADMIN_USER, _credentials(settings)["admin"], settings.db_host, settings.db_port, "postgres")
    with psycopg.connect(server, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.db_name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.db_name)))


@contextlib.contextmanager
def pgstac_db(dsn_: str) -> Iterator[PgstacDB]:  # noqa: F821
    """A pypgstac PgstacDB on a one-connection pool that is closed on exit."""
    from psycopg_pool import ConnectionPool
    from pypgstac.db import PgstacDB

    pool = ConnectionPool(conninfo=dsn_, min_size=1, max_size=1, open=True)
    db = PgstacDB(dsn=dsn_, pool=pool)
    try:
        yield db
    finally:
        db.disconnect()
        pool.close()


def migrate(settings: DatabaseSettings) -> str:
    """Install or upgrade pgstac (pypgstac's migrations) as the admin; returns the version."""
    from pypgstac.migrate import Migrate

    with pgstac_db(dsn(settings, "admin")) as db:
        return Migrate(db).run_migration()


def bootstrap(settings: DatabaseSettings) -> None:
    """pgstac migrated, loader and api login users, pgstac settings. Idempotent."""
    migrate(settings)
    creds = _credentials(settings)
    with psycopg.connect(dsn(settings, "admin"), autocommit=True) as conn:
        for role, user in ROLE_USERS.items():
            ident = sql.Identifier(user)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                    ident, sql.Literal(creds[role])
                )
            )
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(ROLE_GROUPS[role]), ident))
            # Role settings are not inherited from pgstac_read/pgstac_ingest: set them on the user.
            conn.execute(sql.SQL("ALTER ROLE {} SET search_path TO pgstac, public").format(ident))
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(conn.info.dbname), ident))
        for name, value in PGSTAC_SETTINGS.items():
            conn.execute(
                "INSERT INTO pgstac.pgstac_settings (name, value) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                (name, value),
            )
        for statement in DEFER_INDEXES_SQL:
            conn.execute(statement)
        from terramesh_stac.catalog.density import DENSITY_SQL
        from terramesh_stac.catalog.mosaic_cache import MOSAIC_SQL

        for statement in (*DENSITY_SQL, *MOSAIC_SQL):
            conn.execute(statement)


def stop(settings: DatabaseSettings) -> None:
    """Stop the embedded cluster (no-op when it is not running or the database is external)."""
    if settings.dsn:
        return
    bindir = pg_bin_dir()
    if _pg_ctl_status(settings, bindir) == 0:
        _run([str(bindir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(data_dir(settings))], "pg_ctl stop")


def status(settings: DatabaseSettings) -> dict:
    """Where the database is, whether it runs and answers, and its pgstac version."""
    info: dict = {"mode": "external" if settings.dsn else "embedded", "database": settings.db_name}
    if not settings.dsn:
        bindir = pg_bin_dir()
        code = _pg_ctl_status(settings, bindir)
        info.update(
            cluster_dir=str(cluster_dir(settings)),
            bindir=str(bindir),
            host=settings.db_host,
            port=settings.db_port,
            initialized=code != 4,
            running=code == 0,
            log=str(log_file(settings)),
        )
        pidfile = data_dir(settings) / "postmaster.pid"
        if code == 0 and pidfile.exists():
            info["pid"] = int(pidfile.read_text().split()[0])
        if code != 0:
            return info
    try:
        with psycopg.connect(dsn(settings, "admin"), connect_timeout=5) as conn:
            info["server_version"] = conn.execute("SHOW server_version").fetchone()[0]
            row = conn.execute("SELECT to_regproc('pgstac.get_version') IS NOT NULL").fetchone()
            info["pgstac_version"] = conn.execute("SELECT pgstac.get_version()").fetchone()[0] if row[0] else None
            info["reachable"] = True
            info["running"] = True
    except (psycopg.Error, DatabaseError) as e:
        info["reachable"] = False
        info["error"] = str(e).strip()
    return info


# --- per-collection preparation (before the first item load) ----------------------------


def prepare_collection(conn: psycopg.Connection, collection_id: str, partition: str | None = "month") -> None:
    """Set the collection's partitioning and its queryables. Call before its first item load.

    `partition` is pgstac's collections.partition_trunc: "month", "year" or None (one partition).
    Changing it later makes pgstac repartition every item of the collection.
    """
    from terramesh_stac.catalog.queryables import apply_queryables

    if partition not in ("month", "year", None):
        raise ValueError(f"partition must be 'month', 'year' or None, not {partition!r}")
    cur = conn.execute(
        "UPDATE pgstac.collections SET partition_trunc = %s WHERE id = %s AND partition_trunc IS DISTINCT FROM %s",
        (partition, collection_id, partition),
    )
    if (
        cur.rowcount == 0
        and not conn.execute("SELECT 1 FROM pgstac.collections WHERE id = %s", (collection_id,)).fetchone()
    ):
        raise DatabaseError(f"collection {collection_id!r} is not in pgstac: load it first")
    apply_queryables(conn, collection_id)


# --- a throwaway cluster (tests, benchmarks) ----------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def temporary_cluster(
    make_settings: Callable[..., DatabaseSettings] = DatabaseSettings, prefix: str = "terramesh-pgstac-"
) -> Iterator[DatabaseSettings]:
    """An embedded cluster on a free port in a fresh folder, stopped and removed on exit.

    `make_settings(state_dir=, db_port=, dsn=None)` builds its settings (a settings class,
    or a function that adds fields). The folder is a 0755 one under /tmp: as root the
    `postgres` user runs the cluster and must be able to enter it (pytest's temp dirs are 0700).
    """
    state = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(state, 0o755)
    settings = make_settings(state_dir=state, db_port=free_port(), dsn=None)
    try:
        start(settings)
        yield settings
    finally:
        try:
            stop(settings)
        finally:
            shutil.rmtree(state, ignore_errors=True)
