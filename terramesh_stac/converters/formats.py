"""The asset formats a conversion can write: the one vocabulary of options, CLI and collection.

Values are the lower-case names that go into each shard's settings (its content id), so
they must not change.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Format(enum.StrEnum):
    COG = "cog"  # a Cloud-Optimized GeoTIFF copy per modality
    ZARR = "zarr"  # the shard's samples stacked per modality (Zarr v3)
    REF = "ref"  # kerchunk references into the source shard (no copy)


ALLOWED = ", ".join(Format)


def parse_format(value: str) -> Format:
    """`"COG"`, `" cog"` or Format.COG -> Format.COG; anything else is a ValueError."""
    try:
        return Format(str(value).strip().lower())
    except ValueError:
        raise ValueError(f"unknown format {value!r}; choose from {ALLOWED}") from None


def parse_formats(values: str | Iterable[str]) -> tuple[Format, ...]:
    """A non-empty tuple of formats, duplicates dropped, order kept. A single string is one
    format (not its letters)."""
    if isinstance(values, str):
        values = (values,)
    formats = tuple(dict.fromkeys(parse_format(v) for v in values))
    if not formats:
        raise ValueError(f"no format given; choose from {ALLOWED}")
    return formats
