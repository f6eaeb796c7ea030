"""Stream a subset into a training loop: a PyTorch IterableDataset of the official loader's dicts.

    from torch.utils.data import DataLoader
    from terramesh_stac.ml import SubsetDataset

    ds = SubsetDataset("~/.local/state/terramesh-stac/subsets/africa.parquet", return_metadata=True,
                       shuffle=True, seed=0)
    for epoch in range(10):
        ds.set_epoch(epoch)
        for sample in DataLoader(ds, num_workers=4, batch_size=None):
            sample["__key__"], sample["S2L2A"]          # (1, 12, 264, 264) int16, as terramesh.py

Each sample is the dict the dataset card's loader (`terramesh.py`, `zarr_metadata_decoding`
then `remove_extensions`) yields for the same key: `__key__`, one array per modality
(`bands` as stored: (time, band, y, x), the source dtype, NaN payloads included) and, with
`return_metadata`, `center_lon`, `center_lat` (0-d float64), `cloud_mask` ((1, 1, y, x) from
the first optical modality) and `time_<MODALITY>` (int64 ns, left out where the loader
leaves it out: DEM's 0).

The pixels come from the original shards by byte range (the manifest's `<MOD>_href`,
`_offset`, `_size`: no copy of the data), local paths or s3:// (fsspec; `storage_options`
for s3fs). Every sample is read exactly once per epoch across ranks (`RANK`, `WORLD_SIZE`,
or torch.distributed when initialised) and DataLoader workers: the epoch's order (shuffled
with `seed + epoch`, or by id) is dealt out rank by rank, then worker by worker. Reads run
`read_threads` at a time with at most `prefetch` samples decoded ahead, so a slow store
is waited on in parallel and memory stays bounded. A sample that cannot be read or decoded
is logged (key, modality, reason) and skipped (`on_error="raise"` stops instead).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from terramesh_stac.converters.zarrzip import LOADER_ARRAYS, CorruptSampleError, read_arrays
from terramesh_stac.ml.subset import Subset, SubsetError, read, read_member

try:  # a torch Dataset when torch is there (DataLoader workers need it); plain iterable otherwise
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError:  # pragma: no cover - torch is the `ml` extra
    IterableDataset = object

    def get_worker_info():
        return None


logger = logging.getLogger(__name__)
NO_TIME_NS = 1e6  # the loader's rule: DEM stores 0, "no time"


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks: torch.distributed when initialised,
    else the RANK / WORLD_SIZE environment (torchrun sets both), else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def sample_dict(key: str, members: dict[str, bytes], return_metadata: bool) -> dict:
    """The official loader's dict of one sample from its `.zarr.zip` bytes per modality
    (decoded with numcodecs straight from the zarr metadata: converters/zarrzip.read_arrays)."""
    out: dict = {"__key__": key}
    for modality, data in members.items():
        try:
            arrays = read_arrays(data, LOADER_ARRAYS if return_metadata else ("bands",))
        except CorruptSampleError as e:
            raise CorruptSampleError(f"{key} {modality}: {e.reason}") from e
        if "bands" not in arrays:
            raise CorruptSampleError(f"{key} {modality}: the zarr group has no 'bands' array")
        out[modality] = arrays["bands"]
        if not return_metadata:
            continue
        if "center_lon" not in out:  # the same centre in every modality
            out["center_lon"], out["center_lat"] = arrays["center_lon"], arrays["center_lat"]
        if "cloud_mask" in arrays and "cloud_mask" not in out:  # the same S2 mask in every optical modality
            out["cloud_mask"] = arrays["cloud_mask"][np.newaxis, ...]
        if "time" in arrays and arrays["time"].reshape(-1)[0] > NO_TIME_NS:  # as stored: int64 ns
            out[f"time_{modality}"] = arrays["time"]
    return out


class SubsetDataset(IterableDataset):
    def __init__(
        self,
        subset: Subset | str | Path,
        modalities: list[str] | None = None,
        *,
        return_metadata: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        read_threads: int = 4,
        prefetch: int = 16,
        storage_options: dict | None = None,
        on_error: str = "warn",
    ):
        self.subset = subset if isinstance(subset, Subset) else read(Path(subset).expanduser())
        self.modalities = list(modalities or self.subset.modalities)
        unknown = [m for m in self.modalities if m not in self.subset.modalities]
        if unknown:
            raise SubsetError(f"modalities {unknown} are not in subset {self.subset.name!r} ({self.subset.modalities})")
        if read_threads < 1 or prefetch < 1:
            raise ValueError("read_threads and prefetch must be at least 1")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error={on_error!r}: 'warn' (log and go on) or 'raise'")
        self.on_error = on_error
        self.return_metadata, self.shuffle, self.seed = return_metadata, shuffle, seed
        self.read_threads, self.prefetch = read_threads, prefetch
        self.storage_options = storage_options or {}
        self.epoch = 0
        rows = self.subset.rows
        self._ids = rows.column("id").to_pylist()
        self._ranges = {
            m: (
                rows.column(f"{m}_href").to_pylist(),
                rows.column(f"{m}_offset").to_pylist(),
                rows.column(f"{m}_size").to_pylist(),
            )
            for m in self.modalities
        }

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration follows (with `shuffle`)."""
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """Row numbers this rank and worker read this epoch, in order."""
        n = len(self._ids)
        rows = np.random.default_rng(self.seed + self.epoch).permutation(n) if self.shuffle else np.arange(n)
        rank, world = rank_and_world()
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        return rows[rank::world][worker_id::workers]

    def _read(self, i: int) -> dict | None:
        """Sample i, or None (logged) when one of its modalities cannot be read or decoded."""
        key, members = self._ids[i], {}
        try:
            for m in self.modalities:
                hrefs, offsets, sizes = self._ranges[m]
                try:
                    members[m] = read_member(hrefs[i], offsets[i], sizes[i], self.storage_options)
                except OSError as e:
                    raise CorruptSampleError(f"{key} {m}: unreadable: {type(e).__name__}: {e}") from e
            return sample_dict(key, members, self.return_metadata)
        except CorruptSampleError as e:
            if self.on_error == "raise":
                raise
            logger.warning("sample skipped: %s", e.reason)
            return None

    def __iter__(self) -> Iterator[dict]:
        rows = iter(self.order())
        with ThreadPoolExecutor(self.read_threads, thread_name_prefix="terramesh-read") as pool:
            pending: deque = deque()
            for i in rows:
                pending.append(pool.submit(self._read, int(i)))
                if len(pending) >= self.prefetch and (sample := pending.popleft().result()) is not None:
                    yield sample
            while pending:
                if (sample := pending.popleft().result()) is not None:
                    yield sample

    def __len__(self) -> int:
        """Samples of this rank and worker this epoch."""
        return len(self.order())
