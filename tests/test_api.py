"""The STAC API at /stac and /assets, on a live server (fixture `live_server`:
uvicorn subprocess, real pgstac database loaded with the sample catalog of conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import API_COLLECTION_ID, API_SAMPLES

ALL_IDS = {s[0] for s in API_SAMPLES}
REPO = Path(__file__).resolve().parents[1]


def _ids(fc: dict) -> set[str]:
    return {f["id"] for f in fc["features"]}


def _get(url: str, **kw) -> httpx.Response:
    return httpx.get(url, timeout=30, **kw)


# --- search -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"bbox": "8.9,44.9,9.1,45.1"}, {"majortom_val_0000001", "majortom_val_0000002"}),
        ({"bbox": "9.9,46.9,11.1,48.1"}, {"majortom_train_0000003", "ssl4eos12_val_0000004"}),
        ({"bbox": "0,0,1,1"}, set()),
        ({"datetime": "2021-06-01T00:00:00Z/2021-06-30T23:59:59Z"}, {"majortom_val_0000001", "ssl4eos12_val_0000004"}),
        ({"datetime": "../2020-12-31T00:00:00Z"}, {"ssl4eos12_train_0000005"}),
        (
            {"filter": "eo:cloud_cover < 10", "filter-lang": "cql2-text"},
            {"majortom_val_0000001", "majortom_train_0000003", "ssl4eos12_train_0000005"},
        ),
        (
            {"filter": "\"terramesh:source\" = 'ssl4eos12'", "filter-lang": "cql2-text"},
            {"ssl4eos12_val_0000004", "ssl4eos12_train_0000005", "ssl4eos12_train_0000006"},
        ),
        ({"filter": "terramesh:source = 'ssl4eos12' AND eo:cloud_cover < 10"}, {"ssl4eos12_train_0000005"}),
        ({"ids": "majortom_val_0000002,ssl4eos12_train_0000006"}, {"majortom_val_0000002", "ssl4eos12_train_0000006"}),
    ],
)
def test_get_search_returns_exactly_the_expected_items(live_server, params, expected):
    # in this module's collection: other test modules load items into the same database
    r = _get(f"{live_server}/stac/search", params={"collections": API_COLLECTION_ID, **params, "limit": 100})
    assert r.status_code == 200, r.text
    assert _ids(r.json()) == expected


def test_post_search_cql2_json_and_sort(live_server):
    body = {
        "collections": [API_COLLECTION_ID],
        "filter-lang": "cql2-json",
        "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 10]},
        "sortby": [{"field": "properties.eo:cloud_cover", "direction": "asc"}],
    }
    r = httpx.post(f"{live_server}/stac/search", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert [f["id"] for f in r.json()["features"]] == [
        "majortom_train_0000003",
        "majortom_val_0000001",
        "ssl4eos12_train_0000005",
    ]


def test_post_search_cql2_text_is_converted_and_pages_keep_it(live_server):
    """cql2-text in POST (optional in the filter spec; GET has it, so POST takes it too)."""
    body = {
        "collections": [API_COLLECTION_ID],
        "filter-lang": "cql2-text",
        "filter": "eo:cloud_cover < 10 AND \"terramesh:source\" IN ('majortom', 'ssl4eos12')",
        "sortby": [{"field": "properties.eo:cloud_cover", "direction": "asc"}],
        "limit": 2,
    }
    url, seen = f"{live_server}/stac/search", []
    r = httpx.post(url, json=body, timeout=30)
    for _ in range(5):
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [f["id"] for f in page["features"]]
        nxt = [link for link in page["links"] if link["rel"] == "next"]
        if not nxt:
            break
        link = nxt[0]
        r = httpx.post(link["href"], json={**(body if link.get("merge") else {}), **link.get("body", {})}, timeout=30)
    assert seen == ["majortom_train_0000003", "majortom_val_0000001", "ssl4eos12_train_0000005"]


@pytest.mark.parametrize("method", ["GET", "POST", "GET items"])
def test_filter_on_an_unknown_property_is_400_naming_it(live_server, method):
    """terramesh_stac.catalog.api.check_queryables: unknown terms are errors, not empty results."""
    text = "eo:cloud_cover < 10 AND nosuch:prop = 'x'"
    if method == "GET":
        r = _get(f"{live_server}/stac/search", params={"filter": text, "filter-lang": "cql2-text"})
    elif method == "POST":
        r = httpx.post(
            f"{live_server}/stac/search",
            timeout=30,
            json={
                "collections": [API_COLLECTION_ID],
                "filter": {"op": "=", "args": [{"property": "nosuch:prop"}, "x"]},
            },
        )
    else:
        r = _get(f"{live_server}/stac/collections/{API_COLLECTION_ID}/items", params={"filter": text})
    assert r.status_code == 400, r.text
    assert "unknown queryable(s) in filter: nosuch:prop" in r.text, r.text
    # the queryables say so too, and the known ones still work
    q = _get(f"{live_server}/stac/collections/{API_COLLECTION_ID}/queryables").json()
    assert q["additionalProperties"] is False and "eo:cloud_cover" in q["properties"]
    assert _get(f"{live_server}/stac/queryables").json()["additionalProperties"] is False


def test_fields_extension_and_item_collection(live_server):
    r = _get(
        f"{live_server}/stac/collections/{API_COLLECTION_ID}/items",
        params={"limit": 100, "fields": "id,properties.eo:cloud_cover,-assets"},
    )
    assert r.status_code == 200, r.text
    feats = r.json()["features"]
    assert {f["id"] for f in feats} == ALL_IDS
    assert all("assets" not in f and "eo:cloud_cover" in f["properties"] for f in feats)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_pagination_walks_all_items(live_server, method):
    seen: list[str] = []
    url, body = f"{live_server}/stac/search", {"collections": [API_COLLECTION_ID], "limit": 2}
    r = (
        _get(url, params={"collections": API_COLLECTION_ID, "limit": 2})
        if method == "GET"
        else httpx.post(url, json=body, timeout=30)
    )
    for _ in range(10):
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [f["id"] for f in page["features"]]
        nxt = [link for link in page["links"] if link["rel"] == "next"]
        if not nxt:
            break
        link = nxt[0]
        assert link["href"].startswith(f"{live_server}/stac/")
        if link.get("method", "GET") == "POST":
            r = httpx.post(
                link["href"], json={**(body if link.get("merge") else {}), **link.get("body", {})}, timeout=30
            )
        else:
            r = _get(link["href"])
    assert sorted(seen) == sorted(ALL_IDS)  # each item exactly once


# --- links --------------------------------------------------------------------------------


def _follow_all_links(doc: dict, base: str) -> dict[str, int]:
    """GET every non-templated link of a document; {href: status}."""
    out = {}
    for link in doc.get("links", []):
        if link.get("templated"):
            continue
        href = link["href"]
        if link.get("method") == "POST":
            r = httpx.post(href, json=link.get("body", {}), timeout=60)
        else:
            r = _get(href)
        out[f"{link['rel']} {href}"] = r.status_code
        assert href.startswith(base + "/"), f"link leaves the service: {link}"
    return out


def test_every_link_of_landing_collection_item_and_search_works(live_server):
    landing = _get(f"{live_server}/stac/").json()
    collection = _get(f"{live_server}/stac/collections/{API_COLLECTION_ID}").json()
    items = _get(f"{live_server}/stac/collections/{API_COLLECTION_ID}/items?limit=2").json()
    item = items["features"][0]
    search = _get(f"{live_server}/stac/search?limit=2").json()
    post_search = httpx.post(f"{live_server}/stac/search", json={"limit": 2}, timeout=30).json()
    collections = _get(f"{live_server}/stac/collections").json()
    statuses = {}
    for doc in (landing, collection, items, item, search, post_search, collections):
        statuses.update(_follow_all_links(doc, live_server))
    bad = {k: v for k, v in statuses.items() if v != 200}
    assert not bad, bad
    rels = {link["rel"] for link in landing["links"]}
    assert {"self", "root", "data", "conformance", "search", "service-desc"} <= rels
    assert all("/stac/" in link["href"] for link in landing["links"])


def test_item_links_to_tilejson_and_preview(live_server):
    item = _get(f"{live_server}/stac/collections/{API_COLLECTION_ID}/items/majortom_val_0000001").json()
    links = {link["rel"]: link for link in item["links"]}
    tj = links["tiles"]["href"]
    assert tj.startswith(f"{live_server}/raster/collections/{API_COLLECTION_ID}/items/majortom_val_0000001/")
    assert "assets=S2L2A%7Cbidx%3D4%2C3%2C2" in tj  # default preset true_color, folded syntax
    tilejson = _get(tj).json()
    assert tilejson["tiles"][0].startswith(f"{live_server}/raster/")
    preview = _get(links["preview"]["href"])
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"


def test_pystac_client_follows_links(live_server):
    from pystac_client import Client

    client = Client.open(f"{live_server}/stac")
    assert [c.id for c in client.get_collections()] == [API_COLLECTION_ID]
    collection = client.get_collection(API_COLLECTION_ID)
    assert {i.id for i in collection.get_items()} == ALL_IDS
    search = client.search(collections=[API_COLLECTION_ID], limit=2, max_items=None)
    items = list(search.items())
    assert sorted(i.id for i in items) == sorted(ALL_IDS)  # walked 3 pages by `next` links
    expected = {"majortom_val_0000001", "majortom_train_0000003", "ssl4eos12_train_0000005"}
    # cql2-text over GET (POST takes it too: test_post_search_cql2_text_is_converted_and_pages_keep_it)
    search = client.search(filter="eo:cloud_cover < 10", filter_lang="cql2-text", method="GET")
    assert {i.id for i in search.items()} == expected
    search = client.search(filter={"op": "<", "args": [{"property": "eo:cloud_cover"}, 10]})
    assert {i.id for i in search.items()} == expected
    item = items[0]
    assert item.get_self_href().startswith(f"{live_server}/stac/collections/")
    assert item.get_root().id == "terramesh"
    assert item.get_collection().id == API_COLLECTION_ID


# --- assets -------------------------------------------------------------------------------


def test_asset_hrefs_are_urls_built_per_request(live_server, pgstac_db, api_catalog):
    dest, _, _ = api_catalog
    path = f"/stac/collections/{API_COLLECTION_ID}/items/majortom_val_0000001"
    port = urlsplit(live_server).port
    a = _get(f"http://127.0.0.1:{port}{path}").json()
    b = _get(f"http://localhost:{port}{path}").json()
    c = _get(f"http://127.0.0.1:{port}{path}", headers={"Forwarded": "proto=https;host=maps.example.org"}).json()
    rel = "assets/majortom_val_0000001/S2L2A.tif"
    assert a["assets"]["S2L2A"]["href"] == f"http://127.0.0.1:{port}/{rel}"
    assert b["assets"]["S2L2A"]["href"] == f"http://localhost:{port}/{rel}"
    assert c["assets"]["S2L2A"]["href"] == f"https://maps.example.org/{rel}"
    # Nothing host-dependent is stored: pgstac keeps the filesystem path.
    import psycopg

    with psycopg.connect(pgstac_db.admin) as conn:
        row = conn.execute(
            "SELECT content FROM pgstac.get_item(%s, %s) AS content",
            ("majortom_val_0000001", API_COLLECTION_ID),
        ).fetchone()
    assert row[0]["assets"]["S2L2A"]["href"] == str(dest / rel)


def test_assets_served_with_range_requests(live_server, api_catalog):
    dest, _, _ = api_catalog
    rel = "assets/majortom_val_0000001/S2L2A.tif"
    data = (dest / rel).read_bytes()
    r = _get(f"{live_server}/{rel}", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206
    assert r.content == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
    full = _get(f"{live_server}/{rel}")
    assert full.status_code == 200 and full.content == data
    assert _get(f"{live_server}/assets/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_gdal_opens_cog_over_http(live_server, api_catalog):
    import numpy as np
    import rasterio

    dest, _, _ = api_catalog
    item = _get(f"{live_server}/stac/collections/{API_COLLECTION_ID}/items/majortom_val_0000001").json()
    href = item["assets"]["S2L2A"]["href"]
    assert href.startswith("http://")
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_HTTP_MAX_RETRY=0):
        with rasterio.open(href) as remote, rasterio.open(dest / "assets/majortom_val_0000001/S2L2A.tif") as local:
            assert remote.driver == "GTiff" and remote.count == 12 and remote.crs == local.crs
            window = rasterio.windows.Window(10, 20, 30, 40)
            assert np.array_equal(remote.read(4, window=window), local.read(4, window=window))


# --- errors -------------------------------------------------------------------------------

BAD_REQUESTS = [
    ("GET", "/stac/search?bbox=1,2,3", 400),
    ("GET", "/stac/search?bbox=a,b,c,d", 400),
    ("GET", "/stac/search?bbox=10,10,5,5", 400),
    ("GET", "/stac/search?datetime=notadate", 400),
    ("GET", "/stac/search?datetime=2021-13-45T00:00:00Z", 400),
    ("GET", "/stac/search?filter=eo:cloud_cover%20%3C%3C%2010", 400),
    ("GET", "/stac/search?filter-lang=cql2-json&filter=%7Bbad", 400),
    ("GET", "/stac/search?intersects=%7Bbad", 400),
    ("GET", "/stac/search?query=%7Bbad", 400),
    ("GET", "/stac/search?token=garbage", 400),
    ("GET", "/stac/search?limit=-1", 400),
    ("GET", "/stac/search?limit=abc", 400),
    ("POST", "/stac/search", 400, {"bbox": [1, 2]}),
    ("POST", "/stac/search", 400, {"filter": {"op": "<<"}}),
    ("POST", "/stac/search", 400, {"datetime": "bad"}),
    ("POST", "/stac/search", 400, {"token": "x"}),
    ("POST", "/stac/search", 400, {"filter-lang": "cql2-text", "filter": "eo:cloud_cover <<< 10"}),
    ("POST", "/stac/search", 400, {"filter": "eo:cloud_cover < 10"}),  # text without filter-lang
    (
        "POST",
        "/stac/search",
        400,
        {"filter-lang": "cql2-text", "filter": {"op": "<", "args": [{"property": "eo:cloud_cover"}, 10]}},
    ),
    ("POST", "/stac/search", 400, {"filter-lang": "cql3", "filter": "x = 1"}),
    ("GET", "/stac/collections/nope", 404),
    ("GET", "/stac/collections/nope/items", 404),
    ("GET", f"/stac/collections/{API_COLLECTION_ID}/items/nope", 404),
    ("GET", f"/stac/collections/{API_COLLECTION_ID}/items?query=%7Bbad", 400),
    ("POST", f"/stac/collections/{API_COLLECTION_ID}/items", 405, {"id": "x"}),  # no transactions
    ("GET", "/assets/nope.tif", 404),
    ("GET", "/nope", 404),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda c: f"{c[0]} {c[1]}")
def test_bad_requests_are_4xx_with_a_message(live_server, case):
    method, path, expected, *body = case
    r = httpx.request(method, live_server + path, json=body[0] if body else None, timeout=30)
    assert r.status_code == expected, r.text
    assert r.text.strip()


# --- service ------------------------------------------------------------------------------


def test_cors_and_stac_redirect(live_server):
    r = _get(f"{live_server}/stac/collections", headers={"Origin": "http://example.org"})
    assert r.headers.get("access-control-allow-origin") in ("*", "http://example.org")
    r = _get(f"{live_server}/stac", follow_redirects=False)
    assert r.status_code in (307, 308) and r.headers["location"].endswith("/stac/")


# --- stac-api-validator (offline schemas) ---------------------------------------------------


@pytest.fixture
def offline_schemas(monkeypatch, live_server):
    """Make stac-validator (used by stac-api-validator) read JSON Schemas from the ones
    terramesh-stac ships, never from the web.

    stac-api-validator builds `StacValidate(...)` itself with no schema map; stac-validator
    reads core schemas from its own bundled copies and every other schema (extensions and
    their $refs) through `stac_validator.utilities.fetch_and_parse_file`, which is patched:
    a shipped schema is read from terramesh_stac/schemas, the API under test is fetched as
    before, any other URL fails (listed in `refused`, and the validator reports an error).
    """
    from stac_validator import utilities

    from terramesh_stac.validation import SchemaNotShipped, load_schema

    original = utilities.fetch_and_parse_file
    served: list[str] = []
    refused: list[str] = []

    def fetch(input_path: str, headers=None):
        if input_path.startswith(live_server):
            return original(input_path, headers)
        if input_path.startswith(("https://", "http://")):
            try:
                schema = load_schema(input_path)
            except SchemaNotShipped:
                refused.append(input_path)
                raise
            served.append(input_path)
            return json.loads(json.dumps(schema))  # a copy: the validator may modify it
        return original(input_path, headers)

    monkeypatch.setattr(utilities, "fetch_and_parse_file", fetch)
    utilities.fetch_and_parse_schema.cache_clear()
    yield served, refused
    utilities.fetch_and_parse_schema.cache_clear()


def _run_validator(live_server, conformance: list[str], **extra):
    from stac_api_validator.validations import QueryConfig, validate_api

    no_query = QueryConfig(*([None] * 13))
    return validate_api(
        root_url=f"{live_server}/stac/",
        ccs_to_validate=conformance,
        collection=API_COLLECTION_ID,
        geometry=json.dumps(
            {"type": "Polygon", "coordinates": [[[8.9, 44.9], [9.1, 44.9], [9.1, 45.1], [8.9, 45.1], [8.9, 44.9]]]}
        ),
        auth_bearer_token=None,
        auth_query_parameter=None,
        fields_nested_property=None,
        validate_pagination=True,
        query_config=extra.pop("query_config", no_query),
        transaction_collection=None,
        headers={},
        **extra,
    )


def test_stac_api_validator_reports_no_errors(live_server, offline_schemas):
    served, refused = offline_schemas
    (warnings, errors) = _run_validator(live_server, ["core", "collections", "features", "item-search", "filter"])
    print("\n".join(["stac-api-validator warnings:", *list(warnings), "shipped schemas read:", *sorted(set(served))]))
    assert list(errors) == [], list(errors)
    assert refused == []
    # the extension schemas really were validated, from the shipped copies (not skipped)
    assert {
        "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
        "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        "https://stac-extensions.github.io/render/v2.0.0/schema.json",
    } <= set(served), served


def test_stac_api_validator_sort_only_fails_on_its_own_bug(live_server, offline_schemas):
    """Known stac-api-validator 0.6.8 bug, kept visible: its item-search#sort POST bodies send
    `"collections": "<id>"` (a string; STAC API requires an array), which the API rejects
    with 400. Every sort error must be that one; sort itself works (see
    test_post_search_cql2_json_and_sort and the GET sort checks, which pass)."""
    (_, errors) = _run_validator(live_server, ["core", "item-search", "item-search#sort"])
    errors = list(errors)
    assert errors, "validator bug fixed? then run item-search#sort in the main validator test"
    for e in errors:
        assert (
            e.startswith("[Item Search - Sort Ext] : POST")
            and f'"collections": "{API_COLLECTION_ID}"' in e
            and "400 instead of 200" in e
        ), e


# --- database roles: API DSN errors, transactions with the loader role ---------------------

import asyncio  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from tests.conftest import delete_collection, start_service  # noqa: E402

_NO_TERRAMESH_DB_ENV = {"TERRAMESH_API_DSN": "", "TERRAMESH_DSN": "", "TERRAMESH_WRITE_DSN": ""}


@pytest.fixture
def no_libpq_env(monkeypatch):
    for name in ("PGHOST", "PGHOSTADDR", "PGUSER", "PGDATABASE", "PGSERVICE", "PGPORT", *_NO_TERRAMESH_DB_ENV):
        monkeypatch.delenv(name, raising=False)


def _settings(**kw):
    from terramesh_stac.settings import Settings

    return Settings(_env_file=None, **kw)


def test_api_dsn_without_any_database_is_a_clear_error(tmp_path, no_libpq_env):
    from terramesh_stac.catalog.api import api_dsn
    from terramesh_stac.catalog.app import create_app
    from terramesh_stac.catalog.database import DatabaseError

    settings = _settings(state_dir=tmp_path / "state", dest=str(tmp_path))
    with pytest.raises(DatabaseError, match=r"no database to serve from: no credentials at .*db start"):
        api_dsn(settings)
    with pytest.raises(DatabaseError, match="no database to serve from"):
        create_app(settings)  # at startup, not at the first request


def test_api_dsn_with_corrupt_credentials_names_the_file(tmp_path, no_libpq_env):
    from terramesh_stac.catalog import database
    from terramesh_stac.catalog.api import api_dsn

    settings = _settings(state_dir=tmp_path / "state")
    creds = database.credentials_file(settings)
    creds.parent.mkdir(parents=True)
    creds.write_text("{not json")
    with pytest.raises(database.DatabaseError, match=rf"api role's credentials from {creds}.*JSONDecodeError"):
        api_dsn(settings)
    creds.write_text('{"admin": "x"}')  # no api role
    with pytest.raises(database.DatabaseError, match="KeyError: 'api'"):
        api_dsn(settings)


def test_api_dsn_never_falls_back_to_the_admin_dsn(tmp_path, no_libpq_env, pgstac_db):
    from terramesh_stac.catalog.api import api_dsn
    from terramesh_stac.catalog.database import DatabaseError

    # An external database whose generated role passwords are not in this state dir.
    settings = _settings(state_dir=tmp_path / "state", dsn=pgstac_db.admin)
    with pytest.raises(DatabaseError, match="no credentials at .*TERRAMESH_API_DSN"):
        api_dsn(settings)
    # With the state dir of the running cluster: the pgstac_read role.
    assert (
        api_dsn(_settings(state_dir=pgstac_db.settings.state_dir, db_port=pgstac_db.settings.db_port)) == pgstac_db.api
    )


@pytest.mark.subprocess
def test_serve_with_a_misconfigured_database_exits_with_a_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "TERRAMESH_"))}
    env.update(TERRAMESH_STATE_DIR=str(tmp_path / "state"), TERRAMESH_PORT="1")
    proc = subprocess.run(
        [sys.executable, "-m", "terramesh_stac.cli", "serve"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "error: no database to serve from" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


TX_COLLECTION_ID = "terramesh-txtest"


@pytest.fixture(scope="module")
def tx_server(pgstac_db):
    """A second server with transactions enabled, configured like a user would: the
    cluster's state dir and port only (both DSNs derived from its credentials)."""
    cwd = tempfile.mkdtemp(prefix="terramesh-tx-", dir="/tmp")
    env = {
        **_NO_TERRAMESH_DB_ENV,
        "TERRAMESH_STATE_DIR": str(pgstac_db.settings.state_dir),
        "TERRAMESH_DB_HOST": pgstac_db.settings.db_host,
        "TERRAMESH_DB_PORT": str(pgstac_db.settings.db_port),
        "TERRAMESH_ENABLE_TRANSACTIONS": "true",
        "TERRAMESH_DEST": cwd,
        "TERRAMESH_DB_POOL_MAX_SIZE": "2",
    }
    try:
        with start_service(env, cwd, "tx-server") as base:
            yield base
    finally:
        delete_collection(pgstac_db.admin, TX_COLLECTION_ID)


def test_transactions_write_with_the_loader_role(tx_server, pgstac_db):
    import psycopg

    from terramesh_stac.catalog.api import WRITE_APPLICATION_NAME

    collection = {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": TX_COLLECTION_ID,
        "description": "transactions test",
        "license": "CC-BY-SA-4.0",
        "links": [],
        "extent": {
            "spatial": {"bbox": [[30.0, 10.0, 30.1, 10.1]]},
            "temporal": {"interval": [["2024-01-01T00:00:00Z", None]]},
        },
    }
    r = httpx.post(f"{tx_server}/stac/collections", json=collection, timeout=30)
    assert r.status_code in (200, 201), r.text
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "tx-item-1",
        "collection": TX_COLLECTION_ID,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[30.0, 10.0], [30.1, 10.0], [30.1, 10.1], [30.0, 10.1], [30.0, 10.0]]],
        },
        "bbox": [30.0, 10.0, 30.1, 10.1],
        "properties": {"datetime": "2024-08-01T00:00:00Z"},
        "links": [],
        "assets": {},
    }
    r = httpx.post(f"{tx_server}/stac/collections/{TX_COLLECTION_ID}/items", json=item, timeout=30)
    assert r.status_code in (200, 201), r.text
    r = _get(f"{tx_server}/stac/collections/{TX_COLLECTION_ID}/items/tx-item-1")
    assert r.status_code == 200 and r.json()["id"] == "tx-item-1"
    with psycopg.connect(pgstac_db.admin) as conn:
        users = {
            row[0]
            for row in conn.execute(
                "SELECT usename FROM pg_stat_activity WHERE application_name = %s", (WRITE_APPLICATION_NAME,)
            )
        }
    assert users == {"terramesh_loader"}  # pgstac_ingest member; not the read role, not the admin


@pytest.mark.parametrize("role, message", [("api", "is not a member of pgstac_ingest"), ("admin", "is a superuser")])
def test_transactions_refuse_to_start_with_a_wrong_write_role(pgstac_db, tmp_path, role, message):
    from terramesh_stac.catalog.api import create_stac_api
    from terramesh_stac.catalog.database import DatabaseError

    settings = _settings(
        api_dsn=pgstac_db.api,
        write_dsn=getattr(pgstac_db, role),
        enable_transactions=True,
        dest=str(tmp_path),
        db_pool_max_size=1,
    )
    api = create_stac_api(settings, pgstac_db.api)

    async def start():
        async with api.app.router.lifespan_context(api.app):
            pass

    with pytest.raises(DatabaseError, match=message):
        asyncio.run(start())


def test_served_local_paths_become_urls():
    """Assets and the byte-range index of the served destination become service URLs; other
    storage URLs stay as they are."""
    from terramesh_stac.catalog.links import rewrite_asset_hrefs, served_folders

    item = {
        "assets": {
            "cog": {"href": "/data/out/assets/k/S2L2A.tif"},
            "remote": {"href": "s3://bucket/k/S2L2A.tif"},
            "index": {"href": "/data/out/index/"},
            "one-index": {"href": "file:///data/out/index/val/x.parquet"},
        }
    }
    rewrite_asset_hrefs(item, served_folders("/data/out"), "http://h/")
    assert {k: a["href"] for k, a in item["assets"].items()} == {
        "cog": "http://h/assets/k/S2L2A.tif",
        "remote": "s3://bucket/k/S2L2A.tif",
        "index": "http://h/index/",
        "one-index": "http://h/index/val/x.parquet",
    }


def test_links_to_local_paths_are_left_out():
    """An item converted from a local source links each shard it references (`via`) by its
    path: the service does not serve it and must not name server folders; URLs stay."""
    from terramesh_stac.catalog.links import rewrite_asset_hrefs, served_folders

    item = {
        "assets": {},
        "links": [
            {"rel": "via", "href": "/srv/source/val/S2L2A/shard-000.tar"},
            {"rel": "via", "href": "file:///srv/source/val/S1RTC/shard-000.tar"},
            {"rel": "via", "href": "https://huggingface.co/datasets/ibm-esa-geospatial/TerraMesh/x.tar"},
            {"rel": "collection", "href": "../collection.json"},
        ],
    }
    rewrite_asset_hrefs(item, served_folders("/data/out"), "http://h/")
    assert [link["href"] for link in item["links"]] == [
        "https://huggingface.co/datasets/ibm-esa-geospatial/TerraMesh/x.tar",
        "../collection.json",
    ]
