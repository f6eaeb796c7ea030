"""What TerraMesh's eight modalities hold: bands, dtypes, units, nodata.

Facts come from the dataset card, its loader (`terramesh.py`, `terramesh_statistics.yaml`)
and the format notes; every other module reads them from here.
"""

import csv
from dataclasses import dataclass, field
from pathlib import Path

MODALITIES = ("S2L1C", "S2L2A", "S2RGB", "S1GRD", "S1RTC", "DEM", "NDVI", "LULC")
SOURCES = ("majortom", "ssl4eos12")
SPLITS = ("train", "val")

# Each source carries exactly one Sentinel-1 version.
S1_MODALITY = {"majortom": "S1RTC", "ssl4eos12": "S1GRD"}

# Modalities whose zarr group also holds the S2 cloud mask (LULC reuses it).
CLOUD_MASK_MODALITIES = ("S2L1C", "S2L2A", "S2RGB", "LULC")

# Sentinel-2 processing baseline 04.00 (2022-01-25) added a -1000 offset to the
# reflectance, so no-data moved from 0 to -1000 in TerraMesh's S2 arrays.
S2_BASELINE_CHANGE = "2022-01-25"


@dataclass(frozen=True)
class Band:
    name: str
    description: str
    common_name: str | None = None
    center_wavelength: float | None = None  # micrometres
    full_width_half_max: float | None = None  # micrometres
    gsd: float | None = None  # native resolution before resampling to 10 m
    mean: float | None = None  # from terramesh_statistics.yaml
    std: float | None = None

    def stac_fields(self) -> dict:
        """The band as an asset's `bands` entry (STAC 1.1 with eo: fields), no statistics."""
        band: dict = {"name": self.name, "description": self.description}
        for key, value in (
            ("eo:common_name", self.common_name),
            ("eo:center_wavelength", self.center_wavelength),
            ("eo:full_width_half_max", self.full_width_half_max),
        ):
            if value:
                band[key] = value
        return band


@dataclass(frozen=True)
class Modality:
    name: str
    title: str
    dtype: str  # dtype in the source zarr
    unit: str | None
    nodata: float | int | None  # None: per sample (S2) or not defined
    bands: tuple[Band, ...]
    has_time: bool = True
    scale: float | None = None  # physical value = stored * scale
    roles: tuple[str, ...] = ("data",)
    extra: dict = field(default_factory=dict)

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]


def _data_rows(name: str) -> list[dict[str, str]]:
    """The rows of a CSV table in data/ (facts kept as data, not code)."""
    with open(Path(__file__).parent / "data" / name, newline="") as f:
        return list(csv.DictReader(f))


def _s2_bands(names, means, stds):
    # Sentinel-2 MSI bands: STAC eo common name, centre and width (um), native gsd (m)
    table = {r["band"]: r for r in _data_rows("sentinel2_bands.csv")}
    return tuple(
        Band(
            n,
            f"{table[n]['description']} ({n})",
            table[n]["common_name"],
            float(table[n]["center_wavelength_um"]),
            float(table[n]["full_width_half_max_um"]),
            int(table[n]["gsd_m"]),
            m,
            s,
        )
        for n, m, s in zip(names, means, stds)
    )


_L1C = "B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12".split()
_L2A = "B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12".split()


# Class tables, value -> (name, title, colour), from data/classes.csv: LULC (the
# ESRI/Impact Observatory 10-class scheme as used by TerraMesh) and the cloud mask stored
# in S2L1C, S2L2A, S2RGB and LULC samples.
def _class_table(scheme: str) -> dict[int, tuple[str, str, str]]:
    return {
        int(r["value"]): (r["name"], r["title"], r["colour"])
        for r in _data_rows("classes.csv")
        if r["scheme"] == scheme
    }


LULC_CLASSES = _class_table("lulc")
CLOUD_MASK_CLASSES = _class_table("cloud_mask")
CLOUD_MASK_NODATA = 6
# Classes counted as cloud when eo:cloud_cover is computed from the mask.
CLOUDY_CLASSES = (3, 4)

# a table: one modality per paragraph, band statistics on one line
# fmt: off
MODALITY_INFO: dict[str, Modality] = {
    "S2L1C": Modality(
        "S2L1C", "Sentinel-2 L1C top-of-atmosphere reflectance", "int16", None, None,
        _s2_bands(
            _L1C,
            [2357.090, 2137.398, 2018.799, 2082.998, 2295.663, 2854.548, 3122.860,
             3040.571, 3306.491, 1473.849, 506.072, 2472.840, 1838.943],
            [1673.639, 1722.641, 1602.205, 1873.138, 1866.055, 1779.839, 1776.496,
             1724.114, 1771.041, 1079.786, 512.404, 1340.879, 1172.435],
        ),
        scale=0.0001, roles=("data", "reflectance"),
    ),
    "S2L2A": Modality(
        "S2L2A", "Sentinel-2 L2A surface reflectance", "int16", None, None,
        _s2_bands(
            _L2A,
            [1390.461, 1503.332, 1718.211, 1853.926, 2199.116, 2779.989, 2987.025,
             3083.248, 3132.235, 3162.989, 2424.902, 1857.665],
            [2131.157, 2163.666, 2059.311, 2152.477, 2105.179, 1912.773, 1842.326,
             1893.568, 1775.656, 1814.907, 1436.282, 1336.155],
        ),
        scale=0.0001, roles=("data", "reflectance"),
    ),
    "S2RGB": Modality(
        "S2RGB", "Sentinel-2 true-colour composite (8-bit values in int16)", "int16", None, None,
        (
            Band("R", "Red", "red", 0.665, 0.038, 10, 110.349, 69.905),
            Band("G", "Green", "green", 0.560, 0.045, 10, 99.507, 53.708),
            Band("B", "Blue", "blue", 0.490, 0.098, 10, 75.843, 53.378),
        ),
        roles=("data", "visual"),
    ),
    "S1GRD": Modality(
        "S1GRD", "Sentinel-1 GRD backscatter (sigma0, dB)", "float16", "dB", float("nan"),
        (
            Band("vv", "VV backscatter", mean=-12.577, std=5.179),
            Band("vh", "VH backscatter", mean=-20.265, std=5.872),
        ),
        extra={"sar:product_type": "GRD", "sar:polarizations": ["VV", "VH"]},
    ),
    "S1RTC": Modality(
        "S1RTC", "Sentinel-1 radiometrically terrain-corrected backscatter (gamma0, dB)",
        "float16", "dB", float("nan"),
        (
            Band("vv", "VV backscatter", mean=-10.93, std=4.391),
            Band("vh", "VH backscatter", mean=-17.329, std=4.459),
        ),
        extra={"sar:product_type": "RTC", "sar:polarizations": ["VV", "VH"]},
    ),
    "DEM": Modality(
        "DEM", "Copernicus DEM GLO-30 elevation", "int16", "m", None,
        (Band("DEM", "Elevation", mean=651.663, std=928.168),),
        has_time=False, roles=("data", "elevation"),
    ),
    "NDVI": Modality(
        "NDVI", "Normalised difference vegetation index from Sentinel-2 L2A", "float16", None,
        float("nan"), (Band("NDVI", "NDVI (B08-B04)/(B08+B04)", mean=0.327, std=0.322),),
    ),
    "LULC": Modality(
        "LULC", "Land use / land cover classes", "uint8", None, 0,
        (Band("LULC", "Land-cover class"),),
        roles=("data", "classification"),
    ),
}
# fmt: on


def modalities_for_source(source: str) -> list[str]:
    """The seven modalities a sample of `source` has (one Sentinel-1 version only)."""
    other_s1 = "S1GRD" if S1_MODALITY[source] == "S1RTC" else "S1RTC"
    return [m for m in MODALITIES if m != other_s1]


def parse_modality(name: str) -> str:
    """A modality's canonical name, matched case-insensitively: `"s2l2a"` -> `"S2L2A"`."""
    by_lower = {m.lower(): m for m in MODALITIES}
    try:
        return by_lower[str(name).strip().lower()]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; choose from {', '.join(MODALITIES)}") from None
