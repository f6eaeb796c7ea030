"""Validate STAC dicts against the published JSON Schemas, offline when possible.

Where the schemas come from, in order:
1. `TERRAMESH_STAC_SCHEMAS`: a mirror laid out as in shared/stac-schemas/README.md
   (`https://host/path.json` -> `<mirror>/host/path.json`); CI points it at ../shared/stac-schemas;
2. `../shared/stac-schemas` next to the repository, if it exists;
3. the network, through pystac's validator (which fetches and caches the schemas).
If none of these yields a schema, validation FAILS (raises), it never skips.

Usage: `validate(item.to_dict())` -- checks the core schema and every `stac_extensions` entry.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import jsonschema
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[1]
ENV = "TERRAMESH_STAC_SCHEMAS"


class SchemaUnavailable(AssertionError):
    """No schema mirror and no network: validation cannot happen, so the test fails."""


def schema_root() -> Path | None:
    env = os.environ.get(ENV)
    if env:
        p = Path(env)
        if not p.is_dir():
            raise SchemaUnavailable(f"{ENV}={env} is not a directory")
        return p
    default = REPO.parent / "shared" / "stac-schemas"
    return default if default.is_dir() else None


def _local(root: Path, uri: str) -> dict:
    path = root / uri.split("#")[0].split("://", 1)[1]
    if not path.is_file():
        raise SchemaUnavailable(f"schema {uri} is not in the mirror {root} (expected {path})")
    return json.loads(path.read_bytes())


@lru_cache(maxsize=4)
def _registry(root: Path) -> Registry:
    return Registry(retrieve=lambda uri: Resource.from_contents(_local(root, uri)))


def core_schema_uri(d: dict) -> str:
    kind = {"Feature": "item", "Collection": "collection", "Catalog": "catalog"}[d["type"]]
    return f"https://schemas.stacspec.org/v{d['stac_version']}/{kind}-spec/json-schema/{kind}.json"


def schema_uris(d: dict) -> list[str]:
    return [core_schema_uri(d), *d.get("stac_extensions", [])]


def validate(d: dict) -> list[str]:
    """Validate against core + each extension; returns the schema URIs checked."""
    uris = schema_uris(d)
    root = schema_root()
    if root is not None:
        reg = _registry(root)
        for uri in uris:
            jsonschema.Draft7Validator(_local(root, uri), registry=reg).validate(d)
        return uris
    return _validate_online(d, uris)


def _validate_online(d: dict, uris: list[str]) -> list[str]:
    import pystac
    from pystac.validation import validate_dict

    try:
        validate_dict(d)  # core + every stac_extensions entry, schemas fetched over HTTP
    except pystac.STACValidationError:
        raise
    except Exception as e:  # network down, DNS, ...: no schema means failure, not a skip
        raise SchemaUnavailable(
            f"no schema mirror ({ENV} unset, ../shared/stac-schemas absent) and fetching "
            f"schemas failed: {e!r}"
        ) from e
    return uris
