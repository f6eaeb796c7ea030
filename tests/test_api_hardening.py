"""Hostile and careless STAC API requests (issue 11), one row each, on the live server
(fixture `live_server`: uvicorn subprocess, real pgstac with the sample catalog of
conftest.py): every one is a 4xx with a short JSON message that shows no SQL, no PL/pgSQL
context and no server path; and valid requests near the limits still find the right items
(terramesh_stac.catalog.search_checks, catalog/api.py)."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from terramesh_stac.catalog import search_checks as limits
from terramesh_stac.catalog.settings import ServiceSettings
from tests.conftest import API_COLLECTION_ID

CID = API_COLLECTION_ID
ITEM = "majortom_val_0000001"
UNIT_SQUARE = [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]
NEAR_MILAN = "POLYGON((8.9 44.9, 9.1 44.9, 9.1 45.1, 8.9 45.1, 8.9 44.9))"  # items 1 and 2
NEAR_MILAN_JSON = {
    "type": "Polygon",
    "coordinates": [[[8.9, 44.9], [9.1, 44.9], [9.1, 45.1], [8.9, 45.1], [8.9, 44.9]]],
}


def _cql(prop, op, value):
    return {"op": op, "args": [{"property": prop}, value]}


def _nested_not(levels: int, inner: dict) -> dict:
    for _ in range(levels):
        inner = {"op": "not", "args": [inner]}
    return inner


def _ring(n: int) -> list:
    """A closed ring of n positions (n - 1 distinct) around (9, 45): a valid polygon."""
    ring = [
        [9 + 0.1 * math.cos(2 * math.pi * i / (n - 1)), 45 + 0.1 * math.sin(2 * math.pi * i / (n - 1))]
        for i in range(n - 1)
    ]
    return [*ring, ring[0]]


def _hex(text: str) -> str:
    return text.encode().hex()


GET, POST = "GET", "POST"
CLOUD_ABC = "eo:cloud_cover < 'abc'"

# (method, path, request kwargs for httpx, expected status, text the message must contain)
CASES = [
    # --- CQL2 filters type-checked against the queryables -----------------------------
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": CLOUD_ABC}},
        400,
        "eo:cloud_cover is a number",
        id="filter-number-vs-string-get",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"filter": _cql("eo:cloud_cover", "<", "abc")}},
        400,
        "is a number",
        id="filter-number-vs-string-post-json",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"filter-lang": "cql2-text", "filter": CLOUD_ABC}},
        400,
        "is a number",
        id="filter-number-vs-string-post-text",
    ),
    pytest.param(
        GET,
        f"/collections/{CID}/items",
        {"params": {"filter": CLOUD_ABC}},
        400,
        "is a number",
        id="filter-number-vs-string-items",
    ),
    pytest.param(
        GET,
        "/collections",
        {"params": {"filter": CLOUD_ABC}},
        400,
        "is a number",
        id="filter-number-vs-string-collection-search",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": '"terramesh:source" = 5'}},
        400,
        "terramesh:source is a string",
        id="filter-string-vs-number",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": 'eo:cloud_cover = "terramesh:source"'}},
        400,
        "is compared with terramesh:source",
        id="filter-property-vs-property-types",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "datetime > 'abc'"}},
        400,
        "datetime is a date-time",
        id="filter-datetime-vs-text",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "datetime > DATE('2021-13-45')"}},
        400,
        "is not a YYYY-MM-DD date",
        id="filter-impossible-date",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "datetime > TIMESTAMP('yesterday')"}},
        400,
        "not valid CQL2",
        id="filter-bad-timestamp",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "eo:cloud_cover LIKE 'x%'"}},
        400,
        "LIKE needs a string property",
        id="filter-like-on-a-number",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "eo:cloud_cover / 0 > 1"}},
        400,
        "division by zero",
        id="filter-division-by-zero-literal",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "eo:cloud_cover * 1e308 * 1e308 > 1"}},
        400,
        "value out of range",  # PostgreSQL's own error (a data exception): its primary message only
        id="filter-float-overflow-in-database",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "foo(eo:cloud_cover) = 1"}},
        400,
        "Operator foo Not Supported",
        id="filter-unknown-function-pgstac-raise",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "nosuch:prop = 'x'"}},
        400,
        "unknown queryable",
        id="filter-unknown-property",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "eo:cloud_cover <<< 10"}},
        400,
        "not valid cql2-text",
        id="filter-syntax-error",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"filter": {"op": "<", "args": "x"}}},
        400,
        "not valid CQL2",
        id="filter-json-malformed",
    ),
    pytest.param(POST, "/search", {"json": {"filter": [1, 2]}}, 400, "", id="filter-json-not-an-object"),
    # nesting: a 200-deep `not` was a recursion error; 5000 levels crashed cql2's parser
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "NOT (" * 200 + "eo:cloud_cover < 10" + ")" * 200}},
        400,
        "nests too deep",
        id="filter-200-nested-not-get",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"filter": _nested_not(200, _cql("eo:cloud_cover", "<", 10))}},
        400,
        "nests too deep",
        id="filter-200-nested-not-post",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "NOT " * 3000 + "eo:cloud_cover < 10"}},
        400,
        "nests too deep",
        id="filter-3000-prefix-not",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"filter-lang": "cql2-text", "filter": "NOT (" * 3000 + "eo:cloud_cover < 10" + ")" * 3000}},
        400,
        "nests too deep",
        id="filter-3000-nested-not-text-post",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"filter-lang": "cql2-text", "filter": "eo:cloud_cover < 1" + " OR eo:cloud_cover < 1" * 1000}},
        400,
        "longer than",
        id="filter-text-too-long",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "eo:cloud_cover < 10", "filter-lang": "foo"}},
        400,
        "filter-lang",
        id="filter-lang-invalid-get",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"filter": "eo:cloud_cover < 10", "filter-lang": "foo"}},
        400,
        "filter-lang",
        id="filter-lang-invalid-post",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"filter": "eo:cloud_cover < 10"}},
        400,
        "filter-lang is cql2-json",
        id="filter-text-without-lang-post",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "eo:cloud_cover < 10", "filter-crs": "EPSG:3857"}},
        400,
        "filter-crs",
        id="filter-crs-unsupported",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "eo:cloud_cover < 10", "query": '{"eo:cloud_cover": {"lt": 5}}'}},
        400,
        "mutually exclusive",
        id="filter-and-query",
    ),
    # --- the query extension ----------------------------------------------------------
    pytest.param(
        GET,
        "/search",
        {"params": {"query": '{"eo:cloud_cover": {"lt": "abc"}}'}},
        400,
        "is a number",
        id="query-number-vs-string-get",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"query": {"eo:cloud_cover": {"lt": "abc"}}}},
        400,
        "is a number",
        id="query-number-vs-string-post",
    ),
    pytest.param(
        GET, "/search", {"params": {"query": "[1]"}}, 400, "query must be an object", id="query-not-an-object"
    ),
    # --- geometry of intersects and of filters ----------------------------------------
    pytest.param(
        GET,
        "/search",
        {"params": {"intersects": json.dumps({"type": "Polygon", "coordinates": [[[1, 2]]]})}},
        400,
        "at least 4",
        id="intersects-one-position-get",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"intersects": {"type": "Polygon", "coordinates": [[[1, 2]]]}}},
        400,
        "at least 4",
        id="intersects-one-position-post",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"intersects": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}}},
        400,
        "same start and end",
        id="intersects-unclosed-ring",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"intersects": {"type": "Polygon", "coordinates": UNIT_SQUARE[0]}}},
        400,
        "not a valid GeoJSON Polygon",
        id="intersects-wrong-nesting",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"intersects": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}}},
        400,
        "Self-intersection",
        id="intersects-self-intersecting",
    ),
    pytest.param(
        POST,
        "/search",
        {
            "content": '{"intersects": {"type": "Point", "coordinates": [NaN, 1]}}',
            "headers": {"content-type": "application/json"},
        },
        400,
        "not valid JSON",
        id="intersects-nan-post",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"intersects": '{"type": "Point", "coordinates": [NaN, 1]}'}},
        400,
        "not valid JSON",
        id="intersects-nan-get",
    ),
    pytest.param(
        POST,
        "/search",
        {
            "content": '{"intersects": {"type": "Point", "coordinates": [1e400, 1]}}',
            "headers": {"content-type": "application/json"},
        },
        400,
        "infinity",
        id="intersects-infinite",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"intersects": {"type": "Feature", "geometry": None, "properties": {}}}},
        400,
        "GeoJSON geometry",
        id="intersects-a-feature",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"intersects": {"type": "Polygon", "coordinates": [_ring(limits.MAX_GEOMETRY_POSITIONS + 1)]}}},
        400,
        "more than 10000 positions",
        id="intersects-too-many-positions",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"bbox": [0, 0, 1, 1], "intersects": NEAR_MILAN_JSON}},
        400,
        "mutually exclusive",
        id="intersects-and-bbox",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "S_INTERSECTS(geometry, POLYGON((9 45, 9.1 45)))"}},
        400,
        "at least 4",
        id="filter-geometry-two-positions",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "S_INTERSECTS(geometry, POLYGON((0 0, 1 1, 1 0, 0 1, 0 0)))"}},
        400,
        "Self-intersection",
        id="filter-geometry-self-intersecting",
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "S_INTERSECTS(eo:cloud_cover, POINT(1 1))"}},
        400,
        "needs geometries",
        id="filter-spatial-on-a-number",
    ),
    # --- bbox ------------------------------------------------------------------------------
    pytest.param(GET, "/search", {"params": {"bbox": "1,2,3"}}, 400, "4 or 6", id="bbox-three-numbers"),
    pytest.param(GET, "/search", {"params": {"bbox": "0,91,1,92"}}, 400, "latitudes", id="bbox-latitude-out-of-range"),
    pytest.param(
        GET, "/search", {"params": {"bbox": "200,0,300,1"}}, 400, "longitudes", id="bbox-longitude-out-of-range"
    ),
    pytest.param(GET, "/search", {"params": {"bbox": "0,10,1,5"}}, 400, "south", id="bbox-south-above-north-get"),
    pytest.param(POST, "/search", {"json": {"bbox": [0, 10, 1, 5]}}, 400, "south", id="bbox-south-above-north-post"),
    pytest.param(GET, "/search", {"params": {"bbox": "nan,0,1,1"}}, 400, "finite", id="bbox-nan"),
    pytest.param(POST, "/search", {"json": {"bbox": ["a", 0, 1, 1]}}, 400, "finite numbers", id="bbox-strings-post"),
    pytest.param(
        GET,
        "/search",
        {"params": {"filter": "S_INTERSECTS(geometry, BBOX(0, 10, 1, 5))"}},
        400,
        "south",
        id="filter-bbox-literal",
    ),
    # --- limit, fields, sortby, ids ----------------------------------------------------
    pytest.param(GET, "/search", {"params": {"limit": "0"}}, 400, "limit", id="limit-zero"),
    pytest.param(POST, "/search", {"json": {"limit": -5}}, 400, "limit", id="limit-negative-post"),
    pytest.param(
        GET,
        "/search",
        {"params": {"fields": ",".join(f"f{i}" for i in range(limits.MAX_FIELDS + 1))}},
        400,
        "at most 100",
        id="fields-too-many",
    ),
    pytest.param(GET, "/search", {"params": {"fields": ",,"}}, 400, "empty", id="fields-empty-names"),
    pytest.param(GET, "/search", {"params": {"fields": "x" * 2000}}, 400, "longer than", id="fields-too-long"),
    pytest.param(
        POST, "/search", {"json": {"fields": {"include": True}}}, 400, "must be a list", id="fields-not-a-list-post"
    ),
    pytest.param(
        GET,
        "/search",
        {"params": {"sortby": ",".join(["id"] * (limits.MAX_SORTBY + 1))}},
        400,
        "at most 10",
        id="sortby-too-many",
    ),
    pytest.param(
        GET, "/search", {"params": {"sortby": "-nosuch:prop"}}, 400, "unknown propert", id="sortby-unknown-get"
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"sortby": [{"field": "nosuch", "direction": "asc"}]}},
        400,
        "unknown propert",
        id="sortby-unknown-post",
    ),
    pytest.param(GET, "/search", {"params": {"sortby": "+"}}, 400, "empty", id="sortby-empty"),
    pytest.param(
        GET,
        "/search",
        {"params": {"ids": ",".join(f"i{n}" for n in range(limits.MAX_IDS + 1))}},
        400,
        "at most 1000",
        id="ids-too-many-get",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"ids": [f"i{n}" for n in range(limits.MAX_IDS + 1)]}},
        400,
        "at most 1000",
        id="ids-too-many-post",
    ),
    pytest.param(
        POST, "/search", {"json": {"collections": CID}}, 400, "must be a list", id="collections-a-string-post"
    ),
    # --- NUL and control characters (PostgreSQL rejects NUL in text) --------------------
    *[
        pytest.param(GET, "/search", {"params": {name: value}}, 400, "control character", id=f"nul-in-{name}")
        for name, value in [
            ("ids", "a\x00b"),
            ("sortby", "id\x00"),
            ("collections", "a\x00b"),
            ("token", f"next:{_hex(CID)}\x00"),
            ("datetime", "2021-01-01T00:00:00Z\x00"),
            ("filter", "id = 'a\x00b'"),
            ("fields", "id\x00"),
        ]
    ],
    pytest.param(GET, "/collections", {"params": {"q": "sentinel\x00"}}, 400, "control character", id="nul-in-q"),
    pytest.param(
        GET, "/search", {"params": {"ids": "a\x01b"}}, 400, "control character", id="control-character-in-ids"
    ),
    pytest.param(POST, "/search", {"json": {"ids": ["a\x00b"]}}, 400, "NUL", id="nul-in-ids-post"),
    pytest.param(POST, "/search", {"json": {"filter": _cql("id", "=", "a\x00b")}}, 400, "NUL", id="nul-in-filter-post"),
    pytest.param(
        POST,
        "/search",
        {"json": {"token": "next:a\x01b"}},
        400,
        "control character",
        id="control-character-in-token-post",
    ),
    pytest.param(GET, "/collections/a%00b", {}, 400, "control character", id="nul-in-collection-path"),
    pytest.param(GET, f"/collections/{CID}/items/a%00b", {}, 400, "control character", id="nul-in-item-path"),
    # --- free text and paging tokens -----------------------------------------------------
    pytest.param(GET, "/collections", {"params": {"q": "a & | !"}}, 400, "free-text", id="q-not-a-tsquery"),
    pytest.param(GET, "/collections", {"params": {"q": "(("}}, 400, "free-text", id="q-unbalanced"),
    pytest.param(GET, "/search", {"params": {"token": "garbage"}}, 400, "paging token", id="token-garbage"),
    pytest.param(GET, "/search", {"params": {"token": "next:zz:zz"}}, 400, "paging token", id="token-not-hex"),
    pytest.param(
        GET, "/search", {"params": {"token": f"next:{_hex(CID)}:00"}}, 400, "paging token", id="token-hex-of-nul"
    ),
    pytest.param(GET, "/search", {"params": {"token": "next:ff:ff"}}, 400, "paging token", id="token-hex-not-utf8"),
    pytest.param(
        GET,
        "/search",
        {"params": {"token": f"next:{_hex(CID)}:{_hex('no-such-item')}"}},
        400,
        "Could not find item",
        id="token-unknown-item",
    ),
    pytest.param(POST, "/search", {"json": {"token": "x"}}, 400, "paging token", id="token-garbage-post"),
    # --- the POST body ---------------------------------------------------------------------
    pytest.param(POST, "/search", {"json": [1, 2]}, 400, "JSON object", id="body-an-array"),
    pytest.param(POST, "/search", {"json": "abc"}, 400, "JSON object", id="body-a-string"),
    pytest.param(POST, "/search", {"json": 3}, 400, "JSON object", id="body-a-number"),
    pytest.param(
        POST,
        "/search",
        {"content": "null", "headers": {"content-type": "application/json"}},
        400,
        "JSON object",
        id="body-null",
    ),
    pytest.param(
        POST,
        "/search",
        {"content": "{bad", "headers": {"content-type": "application/json"}},
        400,
        "not valid JSON",
        id="body-invalid-json",
    ),
    pytest.param(
        POST,
        "/search",
        {"content": "[" * 2000 + "]" * 2000, "headers": {"content-type": "application/json"}},
        400,
        "not valid JSON",
        id="body-nested-2000-deep",
    ),
    pytest.param(
        POST,
        "/search",
        {"content": '{"limit": 1}', "headers": {"content-type": "text/plain"}},
        415,
        "application/json",
        id="body-not-json-media-type",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"ids": ["x" * 1000] * (ServiceSettings().max_body_bytes // 1000)}},
        413,
        "larger than",
        id="body-too-large",
    ),
    # --- datetime --------------------------------------------------------------------------
    pytest.param(
        GET,
        "/search",
        {"params": {"datetime": "2021-02-01T00:00:00Z/2021-01-01T00:00:00Z"}},
        400,
        "Start datetime cannot be before end",
        id="datetime-end-before-start-get",
    ),
    pytest.param(
        POST,
        "/search",
        {"json": {"datetime": "2021-02-01T00:00:00Z/2021-01-01T00:00:00Z"}},
        400,
        "Begin date after end date",
        id="datetime-end-before-start-post",
    ),
    pytest.param(GET, "/search", {"params": {"datetime": "../.."}}, 400, "open-ended", id="datetime-double-open"),
    pytest.param(
        GET,
        "/search",
        {"params": {"datetime": "2021-01-01T00:00:00Z/2021-02-01T00:00:00Z/2021-03-01T00:00:00Z"}},
        400,
        "more than one",
        id="datetime-three-parts",
    ),
    pytest.param(POST, "/search", {"json": {"datetime": "yesterday"}}, 400, "datetime", id="datetime-not-rfc3339-post"),
    # --- not found ---------------------------------------------------------------------------
    pytest.param(GET, "/collections/nope/items", {}, 404, "nope does not exist", id="items-of-unknown-collection"),
    pytest.param(GET, "/collections/nope", {}, 404, "nope does not exist", id="unknown-collection"),
    pytest.param(GET, f"/collections/{CID}/items/nope", {}, 404, "does not exist", id="unknown-item"),
]


def _call(base: str, method: str, path: str, kwargs: dict) -> httpx.Response:
    return httpx.request(method, f"{base}/stac{path}", timeout=60, **kwargs)


@pytest.mark.parametrize("method, path, kwargs, status, needle", CASES)
def test_bad_request_is_a_short_4xx(live_server, api_catalog, method, path, kwargs, status, needle):
    r = _call(live_server, method, path, kwargs)
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    assert len(r.content) < 1000, r.text[:1200]  # a message, not the input or a trace
    body = r.json()
    message = body["description"]
    assert isinstance(message, str) and message.strip()
    assert needle in message, message
    dest = str(api_catalog[0])
    for leak in ("/tmp", dest, "/work", "site-packages", "SELECT", "CONTEXT", "PL/pgSQL", "Traceback", "asyncpg"):
        assert leak not in r.text, (leak, r.text)


def _ids(r: httpx.Response) -> set[str]:
    assert r.status_code == 200, r.text[:500]
    return {f["id"] for f in r.json()["features"]}


MAJORTOM = {"majortom_val_0000001", "majortom_val_0000002", "majortom_train_0000003"}
SSL4EO = {"ssl4eos12_val_0000004", "ssl4eos12_train_0000005", "ssl4eos12_train_0000006"}
CLOUD_UNDER_10 = {"majortom_val_0000001", "majortom_train_0000003", "ssl4eos12_train_0000005"}
SINCE_2022 = {"majortom_train_0000003", "ssl4eos12_train_0000006"}
JUNE_2021 = {"majortom_val_0000001", "ssl4eos12_val_0000004"}
MILAN = {"majortom_val_0000001", "majortom_val_0000002"}

# valid requests the checks must let through: (method, kwargs, expected item ids)
VALID = [
    pytest.param(GET, {"params": {"filter": "eo:cloud_cover < 10"}}, CLOUD_UNDER_10, id="number-comparison"),
    pytest.param(GET, {"params": {"filter": "10 > eo:cloud_cover"}}, CLOUD_UNDER_10, id="literal-on-the-left"),
    pytest.param(
        POST, {"json": {"filter": _cql("eo:cloud_cover", "<", 10)}}, CLOUD_UNDER_10, id="number-comparison-post"
    ),
    pytest.param(
        GET,
        {"params": {"filter": "eo:cloud_cover + 1 <= 9"}},
        {"majortom_val_0000001", "majortom_train_0000003", "ssl4eos12_train_0000005"},
        id="arithmetic",
    ),
    pytest.param(
        GET, {"params": {"filter": "datetime >= TIMESTAMP('2022-01-01T00:00:00Z')"}}, SINCE_2022, id="timestamp"
    ),
    pytest.param(
        GET,
        {"params": {"filter": "datetime >= '2022-01-01T00:00:00Z'"}},
        SINCE_2022,
        id="rfc3339-string-for-a-date-time",
    ),
    pytest.param(
        GET,
        {"params": {"filter": "T_INTERSECTS(datetime, INTERVAL('2021-06-01T00:00:00Z', '2021-06-30T23:59:59Z'))"}},
        JUNE_2021,
        id="interval",
    ),
    pytest.param(GET, {"params": {"filter": "\"terramesh:source\" = 'majortom'"}}, MAJORTOM, id="string-property"),
    pytest.param(
        GET,
        {"params": {"filter": "\"terramesh:split\" IN ('val') AND \"terramesh:source\" <> 'majortom'"}},
        {"ssl4eos12_val_0000004"},
        id="string-in",
    ),
    pytest.param(GET, {"params": {"filter": "id LIKE 'ssl4eos12%'"}}, SSL4EO, id="like"),
    pytest.param(GET, {"params": {"filter": "CASEI(\"terramesh:source\") = CASEI('MAJORTOM')"}}, MAJORTOM, id="casei"),
    pytest.param(
        GET, {"params": {"filter": f"S_INTERSECTS(geometry, {NEAR_MILAN})"}}, MILAN, id="s-intersects-polygon"
    ),
    pytest.param(GET, {"params": {"intersects": json.dumps(NEAR_MILAN_JSON)}}, MILAN, id="intersects-get"),
    pytest.param(POST, {"json": {"intersects": NEAR_MILAN_JSON}}, MILAN, id="intersects-post"),
    pytest.param(
        POST,
        {"json": {"intersects": {"type": "Polygon", "coordinates": [_ring(limits.MAX_GEOMETRY_POSITIONS)]}}},
        MILAN,
        id="intersects-10000-positions",
    ),
    pytest.param(GET, {"params": {"query": '{"eo:cloud_cover": {"lt": 10}}'}}, CLOUD_UNDER_10, id="query-extension"),
    # depth at the limit: 9 NOTs around a comparison (odd: cloud cover >= 10)
    pytest.param(
        POST,
        {"json": {"filter": _nested_not(9, _cql("eo:cloud_cover", "<", 10))}},
        (MAJORTOM | SSL4EO) - CLOUD_UNDER_10,
        id="filter-depth-10",
    ),
    # deep in the text, not in the expression: parsed off the event loop (these crashed the
    # process on its stack), within MAX_FILTER_TEXT
    pytest.param(
        POST,
        {"json": {"filter-lang": "cql2-text", "filter": "eo:cloud_cover < " + "(" * 9000 + "10" + ")" * 9000}},
        CLOUD_UNDER_10,
        id="9000-parentheses",
    ),
    pytest.param(
        POST,
        {"json": {"filter-lang": "cql2-text", "filter": "eo:cloud_cover < " + "-" * 15000 + "10"}},
        CLOUD_UNDER_10,
        id="15000-unary-minus",
    ),
    pytest.param(GET, {"params": {"limit": "100000"}}, MAJORTOM | SSL4EO, id="limit-over-the-maximum-is-capped"),
    pytest.param(
        POST, {"json": {"conf": {"context": "on", "nohydrate": "x"}}}, MAJORTOM | SSL4EO, id="client-conf-ignored"
    ),
    pytest.param(GET, {"params": {"bbox": "170,-10,-170,10"}}, set(), id="bbox-across-the-antimeridian"),
]


@pytest.mark.parametrize("method, kwargs, expected", VALID)
def test_valid_search_still_finds_the_right_items(live_server, method, kwargs, expected):
    r = _call(
        live_server, method, "/search", {**kwargs} if method == POST else {"params": {"limit": 100, **kwargs["params"]}}
    )
    assert _ids(r) == expected


def test_limit_is_capped_at_the_maximum_in_the_page_size(live_server):
    """`limit` above MAX_LIMIT is served as MAX_LIMIT: a page of 1000 asks pgstac for 1000."""
    r = _call(live_server, GET, "/search", {"params": {"limit": 5, "sortby": "id"}})
    page = _call(live_server, GET, "/search", {"params": {"limit": 100000, "sortby": "id"}})
    assert [f["id"] for f in page.json()["features"]][:5] == [f["id"] for f in r.json()["features"]]
    assert page.json()["numberReturned"] == 6 <= limits.MAX_LIMIT


def test_paging_tokens_of_the_api_are_accepted(live_server):
    first = _call(live_server, GET, "/search", {"params": {"limit": 2, "sortby": "id"}})
    next_link = next(link["href"] for link in first.json()["links"] if link["rel"] == "next")
    second = httpx.get(next_link, timeout=30)
    assert second.status_code == 200, second.text
    seen = [f["id"] for f in first.json()["features"] + second.json()["features"]]
    assert len(set(seen)) == 4


def test_sortby_and_fields_on_queryables_still_work(live_server):
    r = _call(
        live_server,
        GET,
        "/search",
        {"params": {"sortby": "-properties.eo:cloud_cover", "fields": "id,-assets", "limit": 3}},
    )
    assert r.status_code == 200, r.text
    assert [f["id"] for f in r.json()["features"]] == [
        "ssl4eos12_val_0000004",
        "ssl4eos12_train_0000006",
        "majortom_val_0000002",
    ]
    assert all("assets" not in f for f in r.json()["features"])


def test_free_text_and_item_collection_still_work(live_server):
    q = _call(live_server, GET, "/collections", {"params": {"q": "TerraMesh OR sentinel"}})
    assert q.status_code == 200 and CID in {c["id"] for c in q.json()["collections"]}, q.text
    items = _call(
        live_server, GET, f"/collections/{CID}/items", {"params": {"filter": "eo:cloud_cover < 10", "limit": 100}}
    )
    assert _ids(items) == CLOUD_UNDER_10
    item = _call(live_server, GET, f"/collections/{CID}/items/{ITEM}", {})
    assert item.status_code == 200 and item.json()["id"] == ITEM


def test_a_remembered_valid_filter_shape_does_not_pass_an_invalid_one(live_server):
    """search_checks remembers valid filter shapes (cql2's validate costs ~50 ms); a filter
    of another shape (a missing argument, a string for a number) is still checked."""
    search = f"{live_server}/stac/search"
    valid = {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]}
    for value in (20, 35.5):  # the second is answered from the remembered shape
        r = httpx.post(search, json={"filter": {**valid, "args": [valid["args"][0], value]}, "limit": 1})
        assert r.status_code == 200, r.text
    for bad in (
        {"op": "<", "args": [{"property": "eo:cloud_cover"}]},
        {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20, 30]},
        {"op": "<", "args": [{"property": "eo:cloud_cover"}, {"op": "<", "args": []}]},
    ):
        r = httpx.post(search, json={"filter": bad, "limit": 1})
        assert r.status_code == 400, (bad, r.text)
        assert "filter" in r.json()["description"]
