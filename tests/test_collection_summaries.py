"""The collection says what was converted (issue 10): its summaries and extent
are computed from the items of every finished shard, through the CLI as a user runs it
(item_assets is the fixed description of every asset an item may have: item_assets.py).

One generated source: val has two Major TOM shards and one SSL4EO-S12 shard, train one
Major TOM shard. The first run converts val's Major TOM shards only; the second, into the
same destination, converts everything, and the collection grows to match.
"""

import json
from datetime import datetime

import pytest

from terramesh_stac import cli
from terramesh_stac.converters.pipeline import ConvertOptions
from terramesh_stac.converters.run import write_collection
from terramesh_stac.converters.synth import generate
from terramesh_stac.validation import validate
from tests.conftest import read_items

S1 = ("S1GRD", "S1RTC")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("summaries-source")
    generate(root, split="val", shards=3, samples_per_shard=2, seed=3)  # majortom 1, 2; ssl4eos12 3
    generate(root, split="train", shards=1, samples_per_shard=2, seed=4)  # majortom 1
    return root


def _convert(source, dest, *args) -> dict:
    code = cli.main(["convert", str(source), "--dest", str(dest), "--workers", "1", "--quiet", *args])
    assert code == cli.EXIT_OK
    return json.loads((dest / "reports" / "run.json").read_text())


@pytest.fixture(scope="module")
def runs(source, tmp_path_factory):
    """(dest, collection and items after the Major TOM val run, the same after the full run)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TERRAMESH_SCHEDULER", raising=False)
        dest = tmp_path_factory.mktemp("summaries") / "out"
        first_report = _convert(source, dest, "--split", "val", "--max-shards", "2")
        first = json.loads((dest / "collection.json").read_text()), read_items(dest)
        second_report = _convert(source, dest, "--split", "all")
        second = json.loads((dest / "collection.json").read_text()), read_items(dest)
    return dest, first, second, first_report, second_report


def _times(values) -> list[datetime]:
    return [datetime.fromisoformat(v) for v in values]


def _modalities_of(items) -> set[str]:
    """Modalities with an asset in any item, whatever its format."""
    names = ("S2L1C", "S2L2A", "S2RGB", "S1GRD", "S1RTC", "DEM", "NDVI", "LULC")
    return {
        k.split("_")[0]
        for i in items
        for k in i["assets"]
        if k.split("_")[0] in names and not k.endswith("_source")  # the original bytes, not a conversion
    }


def assert_summaries_describe(collection: dict, items: list[dict]) -> None:
    """Every summary equals what the items hold, computed here from the written items."""
    s = collection["summaries"]
    props = [i["properties"] for i in items]
    assert s["terramesh:split"] == sorted({p["terramesh:split"] for p in props})
    assert s["terramesh:source"] == sorted({p["terramesh:source"] for p in props})
    assert s["proj:code"] == sorted({p["proj:code"] for p in props})
    ccs = [p["eo:cloud_cover"] for p in props]
    assert s["eo:cloud_cover"] == {"minimum": min(ccs), "maximum": max(ccs)}
    assert set(s["terramesh:modalities"]) == _modalities_of(items)
    # S1GRD holds GRD, S1RTC RTC products, whichever format their assets have
    assert s["sar:product_type"] == sorted(m.removeprefix("S1") for m in _modalities_of(items) & set(S1))
    # SAR facts are the S1 assets' (lean items: said once, in item_assets)
    s1_assets = [collection["item_assets"][m] for m in _modalities_of(items) & set(S1)]
    assert s["sar:polarizations"] == sorted({v for a in s1_assets for v in a["sar:polarizations"]})
    assert s["sar:instrument_mode"] == sorted({a["sar:instrument_mode"] for a in s1_assets})
    # item_assets: every key an item has is described there (the set is fixed: item_assets.py)
    assert {k for i in items for k in i["assets"]} <= set(collection["item_assets"])


def test_a_major_tom_val_conversion_says_exactly_that(runs):
    _, (collection, items), _, report, _ = runs
    items = list(items.values())
    assert len(items) == 4 and report["skipped"] == 0
    validate(collection)
    s = collection["summaries"]
    assert s["terramesh:split"] == ["val"]
    assert s["terramesh:source"] == ["majortom"]
    assert s["sar:product_type"] == ["RTC"]  # Major TOM has RTC, never GRD
    assert "S1GRD" not in s["terramesh:modalities"] and "S1RTC" in s["terramesh:modalities"]
    assert {collection["item_assets"][k]["sar:product_type"] for i in items for k in i["assets"] if k == "S1RTC"} == {
        "RTC"
    }
    assert s["terramesh:formats"] == ["cog"]
    assert_summaries_describe(collection, items)


def test_collection_extent_from_items(runs):
    """The extent of collection.json as a conversion writes it: the items' bboxes and times."""
    _, (collection, items), _, _, _ = runs
    items = list(items.values())
    ((west, south, east, north),) = collection["extent"]["spatial"]["bbox"]
    assert south == min(i["bbox"][1] for i in items) and north == max(i["bbox"][3] for i in items)
    if any(i["bbox"][0] > i["bbox"][2] for i in items):  # one crosses the antimeridian: all longitudes
        assert (west, east) == (-180.0, 180.0)
    else:
        assert (west, east) == (min(i["bbox"][0] for i in items), max(i["bbox"][2] for i in items))
    start, end = _times(collection["extent"]["temporal"]["interval"][0])
    assert start == min(_times(i["properties"]["datetime"] for i in items))
    assert end == max(_times(i["properties"]["datetime"] for i in items))


def test_a_second_run_into_the_destination_merges_the_summaries(runs):
    _, (first, _), (collection, items), _, report = runs
    items = list(items.values())
    assert len(items) == 8 and report["skipped"] == 2  # the first run's shards were done
    validate(collection)
    s = collection["summaries"]
    assert s["terramesh:split"] == ["train", "val"]
    assert s["terramesh:source"] == ["majortom", "ssl4eos12"]
    assert s["sar:product_type"] == ["GRD", "RTC"]
    assert set(first["summaries"]["proj:code"]) < set(s["proj:code"])
    assert_summaries_describe(collection, items)


def test_an_empty_destination_invents_nothing(tmp_path):
    """The collection written before any shard is finished: no summaries; item_assets is the fixed set."""
    options = ConvertOptions(dest=str(tmp_path / "out"))
    _, collection = write_collection(options, options.store())
    validate(collection)
    assert "summaries" not in collection and "S2L2A" in collection["item_assets"]


def test_only_the_converted_modalities_and_formats_are_described(source, tmp_path, monkeypatch):
    monkeypatch.delenv("TERRAMESH_SCHEDULER", raising=False)
    dest = tmp_path / "out"
    _convert(
        source,
        dest,
        "--split",
        "val",
        "--modalities",
        "S2L2A,S1GRD,S1RTC",
        "--format",
        "cog",
        "--format-for",
        "S1GRD=ref",
        "--format-for",
        "S1RTC=ref",
    )
    collection = json.loads((dest / "collection.json").read_text())
    validate(collection)
    s = collection["summaries"]
    assert s["terramesh:modalities"] == ["S2L2A", "S1GRD", "S1RTC"]
    assert s["terramesh:formats"] == ["cog", "ref"]
    converted = {k for i in read_items(dest).values() for k in i["assets"] if not k.endswith("_source")}
    assert converted == {"S2L2A", "S1GRD_ref", "S1RTC_ref", "cloud_mask"}
    assert_summaries_describe(collection, list(read_items(dest).values()))
