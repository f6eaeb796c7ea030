"""The STAC Collection of TerraMesh: `create_collection(...)` (pure).

STAC 1.1 (see items.py for the version choice). Extent and `summaries` come from what was
converted (summary.Extent / summary.Summary, merged over the shards' manifests): a collection
describes the items it has, and nothing when there are none yet. `item_assets` (core in
STAC 1.1) is the fixed, complete description of every asset an item may have
(item_assets.py): items hold only what differs per sample.

Render presets (render extension v2.0.0) are written in the parameter syntax that
titiler-pgstac 3.2 / titiler-core 2.3 accept, checked in their installed source:
- titiler-pgstac's collection mosaic turns each render into query parameters
  (`Metadata.defaults_params`): `rescale` [[a, b], ...] -> ["a,b", ...], `colormap` dict ->
  JSON string, `assets` passed as is; item-level `/renders` runs `_adapt_render_for_v2`.
- titiler-core 2.3 selects bands per asset as `assets=S2L2A|bidx=4,3,2` (AssetsParams /
  `_parse_asset`); the old `asset_bidx` is only translated on some paths (not for the
  collection mosaic), so renders use the `asset|bidx=` form directly.
- rio-tiler 9 names the bands of all selected assets b1..bN in order, so an `expression`
  over one asset uses b1, b2 ... (`MultiBaseReader.tile`).
The tile service turns a preset into query parameters with
`terramesh_stac.catalog.links.render_query`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pystac

from .item_assets import ITEM_ASSETS
from .items import EXTENSIONS, STAC_VERSION, stac_extensions_for
from .modalities import CLOUD_MASK_CLASSES, CLOUD_MASK_NODATA, LULC_CLASSES
from .summary import Extent, Summary

DOI = "10.48550/arXiv.2504.11172"
CITATION = (
    "Blumenstiel, B., Fraccaro, P., Marsocci, V., Jakubik, J., Maurogiovanni, S., "
    "Czerkawski, M., Sedona, R., Cavallaro, G., Brunschwiler, T., Bernabe-Moreno, J., "
    "Longépé, N. (2025). TerraMesh: A Planetary Mosaic of Multimodal Earth Observation Data. "
    "CVPR Workshops (EarthVision). https://doi.org/10.48550/arXiv.2504.11172"
)
HF_DATASET = "https://huggingface.co/datasets/ibm-esa-geospatial/TerraMesh"

DESCRIPTION = (
    "TerraMesh is a planetary-scale, multimodal, analysis-ready dataset for Earth-observation "
    "foundation models: about 9.2 million co-registered 264 x 264 px patches on a 10 m UTM grid, "
    "from Major TOM Core and SSL4EO-S12 v1.1 locations, 2017-2024. Each item is one sample with "
    "its modalities as lossless Cloud-Optimized GeoTIFFs: Sentinel-2 L1C, L2A and an RGB "
    "composite, Sentinel-1 GRD (SSL4EO-S12 samples) or RTC (Major TOM samples) backscatter in dB, "
    "NDVI, Copernicus DEM GLO-30 and ESRI land use / land cover, plus the Sentinel-2 cloud mask "
    "and a thumbnail. Float16 source arrays are stored as float32 (exact). Converted from the "
    "WebDataset shards published on Hugging Face by terramesh-stac."
)


def _rgba(hex6: str, alpha: int = 255) -> list[int]:
    return [int(hex6[i : i + 2], 16) for i in (0, 2, 4)] + [alpha]


def _colormap(table: dict, nodata_value: int | None) -> dict[str, list[int]]:
    return {str(v): _rgba(colour, 0 if v == nodata_value else 255) for v, (_, _, colour) in sorted(table.items())}


RENDERS: dict[str, dict] = {
    "true-color": {
        "title": "Sentinel-2 L2A true colour (B04, B03, B02)",
        "assets": ["S2L2A|bidx=4,3,2"],
        "rescale": [[0, 3000], [0, 3000], [0, 3000]],
        "color_formula": "gamma RGB 1.3",
        "resampling": "nearest",
    },
    "false-color": {
        "title": "Sentinel-2 L2A false colour infrared (B08, B04, B03)",
        "assets": ["S2L2A|bidx=8,4,3"],
        "rescale": [[0, 5000], [0, 3000], [0, 3000]],
        "resampling": "nearest",
    },
    "s2rgb": {
        "title": "Sentinel-2 RGB composite (8 bit)",
        "assets": ["S2RGB|bidx=1,2,3"],
        "rescale": [[0, 255], [0, 255], [0, 255]],
        "resampling": "nearest",
    },
    "sar-rtc": {
        "title": "Sentinel-1 RTC composite (VV, VH, VV-VH in dB)",
        "assets": ["S1RTC"],
        "expression": "b1;b2;b1-b2",
        "rescale": [[-25, 0], [-30, -5], [0, 15]],
        "resampling": "nearest",
    },
    "sar-grd": {
        "title": "Sentinel-1 GRD composite (VV, VH, VV-VH in dB)",
        "assets": ["S1GRD"],
        "expression": "b1;b2;b1-b2",
        "rescale": [[-25, 0], [-30, -5], [0, 15]],
        "resampling": "nearest",
    },
    "dem": {
        "title": "Copernicus DEM elevation",
        "assets": ["DEM"],
        "rescale": [[-100, 3000]],
        "colormap_name": "terrain",
        "resampling": "nearest",
    },
    "ndvi": {
        "title": "NDVI",
        "assets": ["NDVI"],
        "rescale": [[-1, 1]],
        "colormap_name": "rdylgn",
        "resampling": "nearest",
    },
    "lulc": {
        "title": "Land use / land cover",
        "assets": ["LULC"],
        "colormap": _colormap(LULC_CLASSES, 0),
        "resampling": "nearest",
    },
    "cloud-mask": {
        "title": "Sentinel-2 cloud mask",
        "assets": ["cloud_mask"],
        "colormap": _colormap(CLOUD_MASK_CLASSES, CLOUD_MASK_NODATA),
        "resampling": "nearest",
    },
}


# Before anything is converted: the whole globe from TerraMesh's first year (an extent is required).
UNKNOWN_EXTENT = Extent(bbox=[-180.0, -90.0, 180.0, 90.0], start=datetime(2017, 1, 1, tzinfo=UTC).isoformat())


def create_collection(
    *,
    collection_id: str = "terramesh",
    title: str | None = None,
    description: str | None = None,
    extent: Extent | None = None,
    summary: Summary | None = None,
    index_href: str | None = None,
) -> pystac.Collection:
    """The TerraMesh collection of the items that `extent` and `summary` describe (the
    converter merges them from the shards' manifests, so it never holds all items). Without
    them (nothing converted yet) it has a placeholder extent, no summaries, no item_assets.

    `index_href` (the folder of the byte-range index) becomes the `byte-index` asset.
    """
    summary = summary or Summary()
    extent = extent if extent is not None and extent.bbox is not None else UNKNOWN_EXTENT
    extra_fields = {"sci:doi": DOI, "sci:citation": CITATION, "renders": json.loads(json.dumps(RENDERS))}
    # fixed and complete, whatever was converted: pgstac's base_item derives from it (item_assets.py)
    extra_fields["item_assets"] = json.loads(json.dumps(ITEM_ASSETS))
    coll = pystac.Collection(
        id=collection_id,
        title=title or "TerraMesh",
        description=description or DESCRIPTION,
        extent=extent.to_stac(),
        license="CC-BY-SA-4.0",
        keywords=[
            "TerraMesh",
            "Sentinel-1",
            "Sentinel-2",
            "Copernicus DEM",
            "NDVI",
            "land cover",
            "multimodal",
            "foundation models",
            "Major TOM",
            "SSL4EO-S12",
        ],
        providers=[
            pystac.Provider(
                "IBM Research Europe",
                roles=[pystac.ProviderRole.PRODUCER, pystac.ProviderRole.LICENSOR],
                url="https://research.ibm.com/",
            ),
            pystac.Provider("ESA Φ-lab", roles=[pystac.ProviderRole.PRODUCER], url="https://philab.esa.int/"),
            pystac.Provider(
                "Hugging Face (ibm-esa-geospatial/TerraMesh)", roles=[pystac.ProviderRole.HOST], url=HF_DATASET
            ),
            pystac.Provider(
                "terramesh-stac",
                roles=[pystac.ProviderRole.PROCESSOR],
                description="Converted the WebDataset shards to COGs and STAC.",
            ),
        ],
        summaries=pystac.Summaries(summary.to_stac()),
        extra_fields=extra_fields,
    )
    coll.add_link(pystac.Link("cite-as", f"https://doi.org/{DOI}", title="TerraMesh paper"))
    coll.add_link(
        pystac.Link(
            "license", "https://creativecommons.org/licenses/by-sa/4.0/", media_type="text/html", title="CC-BY-SA-4.0"
        )
    )
    coll.add_link(pystac.Link("via", HF_DATASET, media_type="text/html", title="TerraMesh on Hugging Face"))
    if index_href:
        coll.add_asset(
            "byte-index",
            pystac.Asset(
                index_href,
                title="Byte-range index of the source shards",
                description=(
                    "Parquet files `<split>/<shard>.parquet` (read the folder as one dataset, "
                    "e.g. pyarrow.dataset or DuckDB `read_parquet('.../*/*.parquet')`): per "
                    "tar member its key, modality, tar URL, byte offset and size, and the "
                    "offsets of the zip entries inside it, so one HTTP range request fetches "
                    "a sample's original .zarr.zip (terramesh_stac.converters.byteindex.fetch_member)."
                ),
                media_type="application/vnd.apache.parquet",
                roles=["metadata", "index"],
            ),
        )
    d = coll.to_dict(include_self_link=False, transform_hrefs=False)
    coll.stac_extensions = stac_extensions_for(d)
    return coll


PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
MIRROR_ASSET_KEY = "geoparquet"


def mirror_asset(href: str, *, items: int, files: int) -> dict:
    """The collection asset of a stac-geoparquet export of its items (`terramesh-stac export
    geoparquet`, catalog/export.py): role `collection-mirror`, as harvesters look for it."""
    return {
        "href": href,
        "type": PARQUET_MEDIA_TYPE,
        "roles": ["collection-mirror"],
        "title": "All items as stac-geoparquet",
        "description": (
            f"{items:,} items in {files} Parquet file(s) `year=YYYY/part-0.parquet` (hive "
            "partitions by the year of `datetime`; rows sorted by the geohash of the footprint's "
            "centroid, so a bbox + datetime query reads few row groups). Read the folder as one "
            "dataset, e.g. DuckDB `read_parquet('.../*/*.parquet', hive_partitioning=true)` or "
            "stac_geoparquet.arrow.stac_table_to_items."
        ),
    }


__all__ = ["create_collection", "mirror_asset", "RENDERS", "EXTENSIONS", "STAC_VERSION"]
