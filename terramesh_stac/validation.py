"""Validate STAC dicts offline, against the JSON Schemas shipped in `terramesh_stac/schemas/`.

A schema URI maps to a file by dropping the scheme (`https://host/path.json` ->
`schemas/host/path.json`, see schemas/README.md). Nothing is ever fetched: a schema that is
not shipped is a reported problem, not a network request.

- `problems(d)`: every problem of a STAC item, collection or catalog dict, checked against
  its core schema and each of its `stac_extensions`;
- `validate(d)`: raises `STACSchemaError` on the first problem (tests), else returns the
  schema URIs checked;
- `OfflineSTACValidator`: pystac's validator reading the same files, for `Item.validate()`
  (`pystac.validation.set_validator(OfflineSTACValidator())`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import jsonschema
from jsonschema.exceptions import best_match
from jsonschema_specifications import REGISTRY as SPECIFICATIONS
from pystac.validation.stac_validator import GetSchemaError, JsonSchemaSTACValidator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable

SCHEMAS = files("terramesh_stac") / "schemas"
KINDS = {"Feature": "item", "Collection": "collection", "Catalog": "catalog"}


class SchemaNotShipped(LookupError):
    def __init__(self, uri: str):
        super().__init__(not_shipped(uri))
        self.uri = uri


def not_shipped(uri: str) -> str:
    return f"schema {uri} is not shipped with terramesh-stac"


@cache
def load_schema(uri: str) -> dict:
    """The shipped copy of the schema at `uri` (fragment ignored); SchemaNotShipped if none."""
    scheme, sep, rest = uri.split("#", 1)[0].partition("://")
    parts = rest.split("/")
    if scheme not in ("http", "https") or not sep or any(p in ("", ".", "..") for p in parts):
        raise SchemaNotShipped(uri)
    path = SCHEMAS.joinpath(*parts)
    if not path.is_file():
        raise SchemaNotShipped(uri)
    return json.loads(path.read_bytes())


def _retrieve(uri: str) -> Resource:
    try:
        return Resource.from_contents(load_schema(uri))
    except SchemaNotShipped:
        raise NoSuchResource(ref=uri) from None


def shipped_uris(folder=SCHEMAS, prefix: str = "https://"):
    """The URI of every shipped schema (all are https)."""
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from shipped_uris(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".json"):
            yield f"{prefix}{entry.name}"


# Every shipped schema registered and crawled up front (lookups are then dict hits, ~2x
# faster than retrieving per $ref), plus the JSON Schema meta-schemas jsonschema bundles
# (the collection schema $refs draft-07's); any other $ref goes to _retrieve: shipped files only.
REGISTRY = SPECIFICATIONS.combine(
    Registry(retrieve=_retrieve)
    .with_resources((uri, Resource.from_contents(load_schema(uri))) for uri in shipped_uris())
    .crawl()
)


@cache
def _validator(uri: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(load_schema(uri), registry=REGISTRY)


@dataclass(frozen=True)
class Problem:
    id: str | None  # the STAC object's id
    type: str  # item, collection, catalog (or the unknown `type`)
    schema: str  # URI of the schema that failed
    path: str  # in the instance, e.g. properties.proj:code, assets.S2L2A.href ("" = the object)
    schema_path: str  # in the schema, e.g. oneOf/0/allOf/1/properties/properties/...
    message: str

    def __str__(self) -> str:
        return (
            f"{self.id}: {self.path or '(object)'}: {self.message} "
            f"(schema {self.schema} at {self.schema_path or '(root)'})"
        )


class STACSchemaError(ValueError):
    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


def core_schema_uri(d: dict) -> str:
    kind = KINDS[d["type"]]
    return f"https://schemas.stacspec.org/v{d.get('stac_version')}/{kind}-spec/json-schema/{kind}.json"


def schema_uris(d: dict) -> list[str]:
    return [core_schema_uri(d), *d.get("stac_extensions", [])]


def _instance_path(error: jsonschema.ValidationError) -> str:
    # properties.proj:code, bands[0].nodata (json_path would quote keys: properties['proj:code'])
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    path = path.removeprefix(".")
    if error.validator == "required":  # point at the missing field, not at its parent
        missing = [p for p in error.validator_value if p not in error.instance and error.message.startswith(repr(p))]
        if missing:
            path = f"{path}.{missing[0]}" if path else missing[0]
    return path


def problems(d: dict) -> list[Problem]:
    """Every problem of a STAC dict: core schema plus each `stac_extensions` schema.

    Per failing schema keyword the most specific error is reported (best_match descends
    into anyOf/oneOf), so a bad field inside a oneOf is reported at that field.
    """
    stac_id, kind = d.get("id"), KINDS.get(d.get("type"))
    if kind is None:
        return [
            Problem(
                stac_id,
                str(d.get("type")),
                "",
                "type",
                "",
                f"type {d.get('type')!r} is not a STAC Feature, Collection or Catalog",
            )
        ]
    found = []
    for uri in schema_uris(d):
        try:
            for error in _validator(uri).iter_errors(d):
                best = best_match([error])
                found.append(
                    Problem(
                        stac_id,
                        kind,
                        uri,
                        _instance_path(best),
                        "/".join(map(str, best.absolute_schema_path)),
                        best.message,
                    )
                )
        except SchemaNotShipped as e:
            found.append(Problem(stac_id, kind, uri, "", "", str(e)))
        except Unresolvable as e:  # a $ref into a schema we do not ship
            found.append(Problem(stac_id, kind, uri, "", "", not_shipped(e.ref)))
    return found


def validate(d: dict) -> list[str]:
    """Raise STACSchemaError on the first problem; else return the schema URIs checked."""
    found = problems(d)
    if found:
        raise STACSchemaError(found[0])
    return schema_uris(d)


class OfflineSTACValidator(JsonSchemaSTACValidator):
    """pystac's JSON Schema validator, reading schemas pystac does not bundle from ours.

    `_get_schema` is pystac-internal (1.x); a schema we do not ship fails validation
    (GetSchemaError) instead of being fetched from the web.
    """

    def _get_schema(self, schema_uri: str) -> dict:
        if schema_uri not in self.schema_cache:
            try:
                self.schema_cache[schema_uri] = load_schema(schema_uri)
            except SchemaNotShipped as e:
                raise GetSchemaError(schema_uri, e) from e
        return self.schema_cache[schema_uri]
