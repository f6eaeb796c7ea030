"""The typed Manifest: what a converted shard's manifest holds, read back as written."""

import dataclasses
import json

import pytest

from terramesh_stac.converters.layout import manifest_path
from terramesh_stac.converters.manifest import (
    MANIFEST_FORMAT,
    ItemsRecord,
    Manifest,
    OutdatedManifest,
    all_manifests,
    read_manifest,
    write_manifest,
)
from terramesh_stac.converters.pipeline import ConvertOptions, ShardReport, convert_shard
from terramesh_stac.converters.summary import Extent, Summary
from terramesh_stac.converters.synth import generate
from tests.conftest import read_items

SHARD = "ssl4eos12_shard_000002.tar"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest-source")
    generate(root, split="val", shards=2, samples_per_shard=3, seed=9)  # majortom 1, ssl4eos12 2
    options = ConvertOptions(dest=str(tmp_path_factory.mktemp("manifest") / "out"))
    report = convert_shard(str(root), "val", SHARD, options)
    return root, options, report


def test_the_manifest_round_trips_byte_for_byte(converted):
    _, options, _ = converted
    store = options.store()
    data = store.get(manifest_path("val", SHARD))
    manifest = read_manifest(store, "val", SHARD)
    assert isinstance(manifest, Manifest)
    assert manifest.to_json() == data
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert json.loads(data)["format"] == MANIFEST_FORMAT  # readable JSON on disk
    assert all_manifests(store) == [manifest]


def test_its_typed_parts_say_what_the_shard_wrote(converted):
    _, options, report = converted
    manifest = read_manifest(options.store(), "val", SHARD)
    items = read_items(options.dest)
    assert isinstance(manifest.items, ItemsRecord) and isinstance(manifest.extent, Extent)
    assert manifest.items.count == len(items) == 3 and set(manifest.items.ids) == set(items)
    assert manifest.items.removed == []
    assert manifest.collection == "terramesh" and manifest.content_id == report.content_id
    assert isinstance(manifest.summary, Summary) and manifest.summary == report.summary
    assert manifest.summary.source == ["ssl4eos12"] and "S1GRD" in manifest.summary.modalities
    assert manifest.summary.proj_code == sorted({i["properties"]["proj:code"] for i in items.values()})
    assert set(manifest.assets) == {
        f"assets/{key}/{a['href'].rsplit('/', 1)[1]}"
        for key, item in items.items()
        for k, a in item["assets"].items()
        if not k.endswith("_source")
    }
    # a skipped shard reports from its manifest what the conversion reported
    skipped = ShardReport.from_manifest(manifest)
    assert skipped.skipped and skipped.extent == report.extent and skipped.summary == report.summary


def test_a_manifest_of_another_format_means_convert_again(converted):
    root, options, _ = converted
    store = options.store()
    relpath = manifest_path("val", SHARD)
    current = read_manifest(store, "val", SHARD)
    old = json.loads(store.get(relpath))
    old["format"] = MANIFEST_FORMAT - 1
    del old["summary"]  # what the previous format wrote
    store.put(relpath, json.dumps(old).encode())
    with pytest.raises(OutdatedManifest):
        Manifest.from_json(store.get(relpath))
    assert read_manifest(store, "val", SHARD) is None and all_manifests(store) == []
    again = convert_shard(str(root), "val", SHARD, options)
    assert not again.skipped and again.content_id == current.content_id
    assert read_manifest(store, "val", SHARD) == current  # the same content, written again


def test_write_manifest_takes_a_manifest(converted, tmp_path):
    _, options, _ = converted
    manifest = read_manifest(options.store(), "val", SHARD)
    other = ConvertOptions(dest=str(tmp_path)).store()
    changed = dataclasses.replace(
        manifest, superseded={"revisions/x/a.tif": {"size": 1, "checksum": "1220ab", "of": "a.tif", "content_id": "x"}}
    )
    assert write_manifest(other, changed) == manifest_path("val", SHARD)
    assert read_manifest(other, "val", SHARD) == changed
