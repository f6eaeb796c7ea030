"""Schemathesis against the STAC API's own OpenAPI document (`/stac/api`) on the live server
(fixture `live_server`: uvicorn subprocess, real pgstac with the sample catalog): every
operation, generated valid and invalid requests, no answer may be a server error (5xx).

Bounded and reproducible: MAX_EXAMPLES per operation and phase, derandomized, no example
database; the examples, coverage and fuzzing phases of schemathesis' pytest integration.
The fuzzer also gets real values (schemathesis dictionaries): the sample's collection and
item ids for the path parameters, and CQL2 filters, ids, bboxes and datetimes, valid and
hostile, for the search parameters, so requests reach the database and not only the checks.
"""

from __future__ import annotations

import collections
import os

import hypothesis
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

from tests.conftest import API_COLLECTION_ID, API_SAMPLES

MAX_EXAMPLES = 100

ITEM_IDS = [s[0] for s in API_SAMPLES]
FILTERS = [
    "eo:cloud_cover < 10",
    "eo:cloud_cover < 'abc'",
    "\"terramesh:source\" = 'ssl4eos12' AND eo:cloud_cover BETWEEN 1 AND 30",
    "datetime > TIMESTAMP('2021-01-01T00:00:00Z')",
    "datetime > 'nope'",
    "S_INTERSECTS(geometry, POLYGON((8.9 44.9, 9.1 44.9, 9.1 45.1, 8.9 45.1, 8.9 44.9)))",
    "S_INTERSECTS(geometry, POLYGON((9 45, 9.1 45)))",
    "NOT (" * 30 + "eo:cloud_cover < 10" + ")" * 30,
    "eo:cloud_cover / 0 > 1",
    "id LIKE 'major%'",
    "eo:cloud_cover LIKE 'x%'",
    "foo(eo:cloud_cover) = 1",
    "T_INTERSECTS(datetime, INTERVAL('2021-01-01', '..'))",
    "datetime = DATE('2021-13-45')",
]
CONFIG = {
    "dictionaries": {
        "collection_ids": {"values": [API_COLLECTION_ID, f"{API_COLLECTION_ID},nope"]},
        "item_ids": {"values": ITEM_IDS},
        "filters": {"values": FILTERS},
        "bboxes": {"values": ["8.9,44.9,9.1,45.1", "-180,-90,180,90", "170,-10,-170,10", "0,0,0,0"]},
        "datetimes": {"values": ["2021-06-01T00:00:00Z/2021-06-30T23:59:59Z", "../2020-12-31T00:00:00Z", "2021-06-01"]},
        "sortbys": {"values": ["-eo:cloud_cover", "+datetime,-id", "properties.eo:cloud_cover", "nope"]},
    },
    "parameters": {
        "path.collection_id": {"dictionary": "collection_ids", "probability": 0.7},
        "path.item_id": {"dictionary": "item_ids", "probability": 0.7},
        "query.collections": {"dictionary": "collection_ids", "probability": 0.5},
        "query.ids": {"dictionary": "item_ids", "probability": 0.3},
        "query.filter": {"dictionary": "filters", "probability": 0.5},
        "query.bbox": {"dictionary": "bboxes", "probability": 0.4},
        "query.datetime": {"dictionary": "datetimes", "probability": 0.4},
        "query.sortby": {"dictionary": "sortbys", "probability": 0.4},
        "body.collections[*]": {"dictionary": "collection_ids", "probability": 0.5},
        "body.ids[*]": {"dictionary": "item_ids", "probability": 0.3},
        "body.filter": {"dictionary": "filters", "probability": 0.3},
    },
    "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
    # TERRAMESH_FUZZ_SEED=N runs another reproducible set of examples (more fuzzing by hand)
    "seed": int(os.environ.get("TERRAMESH_FUZZ_SEED", "20261202")),
}

REQUESTS: collections.Counter[str] = collections.Counter()  # operation -> requests made
STATUSES: collections.Counter[tuple[str, int]] = collections.Counter()  # (operation, status) -> responses


def _stac_openapi_document() -> dict:
    """The STAC app's OpenAPI document, built in-process: schemathesis must see the
    operations when pytest collects (its lazy `from_fixture` loader does not run on pytest 9:
    it sets `Function._nodeid`, which pytest 9 removed). test_the_served_document_is_the_one_fuzzed
    checks that the live server serves this same document."""
    from terramesh_stac.catalog.api import create_stac_api
    from terramesh_stac.catalog.settings import ServiceSettings

    settings = ServiceSettings(dest="/nonexistent", api_dsn="postgresql://unused@127.0.0.1/unused")
    return create_stac_api(settings, settings.api_dsn).app.openapi()


DOCUMENT = _stac_openapi_document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=SchemathesisConfig.from_dict(CONFIG))


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # no shrinking: a failure is reported as found
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_stac_api_answers_no_server_error(case, live_server):
    operation = f"{case.method} {case.path}"
    REQUESTS[operation] += 1
    response = case.call_and_validate(base_url=f"{live_server}/stac", checks=[not_a_server_error], timeout=60)
    STATUSES[operation, response.status_code] += 1


def test_the_served_document_is_the_one_fuzzed(live_server):
    import httpx

    served = httpx.get(f"{live_server}/stac/api", timeout=30).json()
    assert served.pop("servers") == [{"url": "/stac"}]  # FastAPI adds the mount path it is served under
    assert served == DOCUMENT


def test_the_fuzzer_reached_every_operation():
    """The run above is not vacuous: every operation of the document got requests."""
    operations = {f"{op.method.upper()} {op.path}" for op in (r.ok() for r in schema.get_all_operations())}
    assert "POST /search" in operations and "GET /collections/{collection_id}/items/{item_id}" in operations
    assert not [op for op in operations if op.startswith(("PUT", "DELETE", "PATCH"))]  # no transactions served
    missing = {op for op in operations if REQUESTS[op] == 0}
    assert not missing, f"no requests for {missing}; made {dict(REQUESTS)}"
    fuzzed = {op: n for op, n in REQUESTS.items() if op in operations}
    ok = {op: STATUSES[op, 200] for op in operations}
    print(
        f"\nschemathesis: {sum(REQUESTS.values())} requests ({sum(fuzzed.values())} on the {len(operations)} operations)"
    )
    print(f"per operation: {fuzzed}\nanswered 200: {ok}")
    # real data reached: searches that found something, items that exist
    assert ok["GET /search"] and ok["POST /search"] and ok["GET /collections/{collection_id}/items/{item_id}"], ok
