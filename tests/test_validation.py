"""Offline STAC validation: the shipped schemas, `terramesh_stac.validation`, and
`terramesh-stac validate` on a real conversion and on the running STAC API."""

import copy
import json
import shutil
import socket
from urllib.parse import urljoin

import pystac
import pytest
from pystac.validation import RegisteredValidator, set_validator
from pystac.validation.stac_validator import GetSchemaError

from terramesh_stac.cli import EXIT_FAILED, EXIT_OK, main
from terramesh_stac.converters.items import EXTENSIONS
from terramesh_stac.validate_catalog import validate_api
from terramesh_stac.validation import (
    REGISTRY,
    OfflineSTACValidator,
    STACSchemaError,
    load_schema,
    problems,
    shipped_uris,
    validate,
)
from tests.conftest import API_COLLECTION_ID, read_items

PROJECTION = EXTENSIONS["proj:"]
UNSHIPPED = "https://stac-extensions.github.io/mlm/v1.0.0/schema.json"
CORE = [f"https://schemas.stacspec.org/v1.1.0/{k}-spec/json-schema/{k}.json" for k in ("item", "collection", "catalog")]
# the STAC API landing page: stac-fastapi (stac-pydantic's STAC_VERSION) declares STAC 1.0.0
LANDING = "https://schemas.stacspec.org/v1.0.0/catalog-spec/json-schema/catalog.json"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (validation must never fetch)."""

    def refuse(self, address):
        raise AssertionError(f"network access to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture(scope="module")
def converted(synth_root, tmp_path_factory):
    """`terramesh-stac convert` of the generated sample with every asset format (so every
    extension our items and collection can declare appears)."""
    dest = tmp_path_factory.mktemp("validate") / "out"
    rc = main(
        ["convert", str(synth_root), "--dest", str(dest), "--format", "cog,zarr,ref", "--workers", "1", "--quiet"]
    )
    assert rc == EXIT_OK
    return dest


# --- the shipped schemas --------------------------------------------------------------------


PYSTAC_PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_shipped_schemas_are_exactly_what_our_objects_need():
    """Every $ref of every shipped file resolves (to a shipped file, or to jsonschema's own
    draft-07 meta-schema), and nothing is shipped that the core schemas and our extensions
    do not reach."""
    shipped = set(shipped_uris())
    # + projection v2.0.0: what pystac migrates our projection v1.2.0 items to when it reads them
    reached, todo = set(), [*CORE, LANDING, *EXTENSIONS.values(), PYSTAC_PROJECTION]
    while todo:
        uri = todo.pop()
        if uri in reached:
            continue
        reached.add(uri)
        for ref in _refs(load_schema(uri)):
            REGISTRY.resolver(base_uri=uri).lookup(ref)  # raises if it does not resolve
            target = urljoin(uri, ref).split("#")[0]
            if target != "http://json-schema.org/draft-07/schema":
                todo.append(target)
    assert reached == shipped, (reached - shipped, shipped - reached)
    assert len(shipped) == 28


def test_converted_objects_declare_only_shipped_extensions(converted):
    declared = {uri for item in read_items(converted).values() for uri in item["stac_extensions"]}
    declared |= set(json.loads((converted / "collection.json").read_text())["stac_extensions"])
    assert declared <= set(shipped_uris())
    assert PROJECTION in declared and EXTENSIONS["xarray:"] in declared


# --- the library ----------------------------------------------------------------------------


def test_converted_items_validate_and_faults_are_reported_at_the_field(converted, no_network):
    item = next(iter(read_items(converted).values()))
    assert problems(item) == []
    assert PROJECTION in validate(item)

    bad = copy.deepcopy(item)
    bad["properties"]["proj:code"] = 12345
    bad["assets"]["S2L2A"]["bands"] = [{"name": "B01"}, {"name": 5}]  # lean items: bands only where they differ
    found = problems(bad)
    assert {(p.path, p.schema) for p in found} == {
        ("properties.proj:code", PROJECTION),
        ("assets.S2L2A.bands[1].name", CORE[0]),
    }
    proj = next(p for p in found if p.schema == PROJECTION)
    assert proj.id == item["id"] and proj.type == "item"
    assert proj.schema_path == "oneOf/0/allOf/1/properties/properties/properties/proj:code/type"
    assert proj.message == "12345 is not of type 'string', 'null'"
    with pytest.raises(STACSchemaError) as e:
        validate(bad)
    assert e.value.problem in found


def test_a_schema_that_is_not_shipped_is_a_problem_not_a_download(converted, no_network):
    item = next(iter(read_items(converted).values()))
    item["stac_extensions"].append(UNSHIPPED)
    assert [str(p) for p in problems(item)] == [
        f"{item['id']}: (object): schema {UNSHIPPED} is not shipped with terramesh-stac (schema {UNSHIPPED} at (root))"
    ]
    old = dict(item, stac_version="1.0.0", stac_extensions=[])
    assert [p.message for p in problems(old)] == [
        "schema https://schemas.stacspec.org/v1.0.0/item-spec/json-schema/item.json is not shipped with terramesh-stac"
    ]
    assert problems({"type": "FeatureCollection"})[0].path == "type"


def test_pystac_validate_reads_the_shipped_schemas(converted, no_network):
    before = RegisteredValidator.get_validator()
    set_validator(OfflineSTACValidator())
    try:
        item = pystac.Item.from_dict(next(iter(read_items(converted).values())))
        assert PYSTAC_PROJECTION in item.validate()  # pystac migrated projection v1.2.0 to v2.0.0
        collection = pystac.Collection.from_file(str(converted / "collection.json"))
        assert EXTENSIONS["renders"] in collection.validate()
        item.properties["proj:code"] = 12345
        with pytest.raises(pystac.STACValidationError, match="12345 is not of type"):
            item.validate()
        item.properties["proj:code"] = "EPSG:32632"
        item.stac_extensions.append(UNSHIPPED)
        with pytest.raises(GetSchemaError, match="not shipped with terramesh-stac"):
            item.validate()
    finally:
        set_validator(before)


# --- terramesh-stac validate ----------------------------------------------------------------


def test_validate_a_destination(converted, capsys, no_network):
    n = len(read_items(converted))
    assert n == 12
    assert main(["validate", str(converted)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"1 collections, {n} items; 0 errors" in out, out


def test_validate_a_destination_on_s3(converted, s3_server, monkeypatch, capsys):
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # what Store uses without settings
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="validate")
    for path in [converted / "collection.json", *(converted / "items").rglob("*.ndjson")]:
        s3.upload_file(str(path), "validate", f"out/{path.relative_to(converted).as_posix()}")
    assert main(["validate", "s3://validate/out"]) == EXIT_OK
    assert "s3://validate/out: 0 catalogs, 1 collections, 12 items; 0 errors" in capsys.readouterr().out


def test_validate_reports_a_broken_item_with_its_faults(converted, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(converted / "items", broken / "items")
    shutil.copy(converted / "collection.json", broken)
    path = sorted((broken / "items").rglob("*.ndjson"))[0]
    lines = path.read_text().splitlines()
    item = json.loads(lines[1])
    item["properties"]["proj:code"] = 12345
    del item["assets"]["DEM"]["href"]
    lines[1] = json.dumps(item)
    path.write_text("\n".join(lines) + "\n")

    assert main(["validate", str(broken)]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "1 collections, 12 items; 2 errors" in out, out
    assert (
        f"{item['id']}: properties.proj:code: 12345 is not of type 'string', 'null' (schema "
        f"{PROJECTION} at oneOf/0/allOf/1/properties/properties/properties/proj:code/type)"
    ) in out
    assert (
        f"{item['id']}: assets.DEM.href: 'href' is a required property (schema {CORE[0]} at "
        "allOf/0/allOf/2/properties/assets/additionalProperties/allOf/0/required)"
    ) in out

    assert main(["validate", str(broken), "--show", "1"]) == EXIT_FAILED
    assert "... and 1 more errors" in capsys.readouterr().out


def test_validate_nothing_found_fails(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == EXIT_FAILED
    assert "nothing to validate" in capsys.readouterr().out


def test_validate_the_running_api(live_server, api_catalog, capsys):
    _, _, items = api_catalog
    assert main(["validate", f"{live_server}/stac"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "1 catalogs" in out and " 0 errors" in out, out

    # every page followed: 2 items per request gives the same counts as one request
    whole = validate_api(f"{live_server}/stac")
    paged = validate_api(f"{live_server}/stac", page_size=2)
    assert whole.ok and paged.ok
    assert paged.items == whole.items >= len(items) and paged.collections == whole.collections
    # bounded: at most N items per collection
    assert validate_api(f"{live_server}/stac", max_items=1).items <= whole.collections


def test_validate_the_api_reports_a_broken_item(live_server, api_catalog, pgstac_db, tmp_path):
    """An invalid item served by the API is reported with its id (loaded straight into pgstac,
    as a foreign loader could)."""
    from pypgstac.load import Loader, Methods

    from terramesh_stac.catalog import database

    _, _, items = api_catalog
    bad = copy.deepcopy(items[0])
    bad["id"] = "broken_val_0000001"
    bad["properties"]["proj:code"] = 12345
    with database.pgstac_db(pgstac_db.loader) as db:
        Loader(db=db).load_items(iter([bad]), insert_mode=Methods.upsert)
    try:
        report = validate_api(f"{live_server}/stac")
        assert not report.ok
        assert [(p.id, p.path) for p in report.problems] == [("broken_val_0000001", "properties.proj:code")]
    finally:
        with database.pgstac_db(pgstac_db.loader) as db:
            db.query_one("SELECT delete_item(%s, %s)", ["broken_val_0000001", API_COLLECTION_ID])
