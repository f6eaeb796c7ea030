"""A small true-colour JPEG thumbnail of a sample, from its S2RGB modality.

S2RGB holds 8-bit values (0..255) in int16, bands R, G, B. The thumbnail is the patch at
full size (264 px is already thumbnail-sized), clipped to 0..255, JPEG quality 85: ~15-40 kB,
against ~150-200 kB for a PNG of the same patch. No-data pixels stay black.
"""

from __future__ import annotations

import io

import numpy as np
import xarray as xr
from PIL import Image

from .sample import EncodedAsset

THUMBNAIL_QUALITY = 85


def encode_thumbnail(s2rgb: xr.Dataset, *, max_size: int = 264) -> EncodedAsset:
    """JPEG bytes of the S2RGB patch, longest side at most `max_size` px, roles ["thumbnail"]."""
    a = s2rgb["bands"]
    if "time" in a.dims:
        a = a.isel(time=0)
    if "band" in a.coords:
        names = [str(b) for b in a["band"].values]
        if {"R", "G", "B"} <= set(names):
            a = a.sel(band=["R", "G", "B"])
    rgb = np.asarray(a.values)[:3]
    if rgb.dtype.kind == "f":
        rgb = np.nan_to_num(rgb, nan=0.0)
    rgb = np.clip(rgb, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    img = Image.fromarray(rgb, mode="RGB")
    if max(img.size) > max_size:
        img.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return EncodedAsset(
        key="thumbnail",
        data=buf.getvalue(),
        media_type="image/jpeg",
        roles=["thumbnail"],
        filename="thumbnail.jpg",
        fields={"title": "True-colour thumbnail (S2RGB)"},
    )
