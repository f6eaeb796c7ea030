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
`_offset`, `_size`: no copy of the data), with `read_from="zarr"` from the shards' stacked
Zarr stores (`<MOD>_zarr_stack`: ml/stacks.py, each store opened once per process, no
request per sample), or with `read_from="cog"` from the items' COGs (`<MOD>_cog` and
`cloud_mask_cog`: ml/cogs.py, one request per COG; the centre and times as the item gives
them, the centre to 1e-6 degree), local paths or s3:// (fsspec; `storage_options` for s3fs).
Every sample is read exactly once per epoch across ranks (`RANK`, `WORLD_SIZE`,
or torch.distributed when initialised) and DataLoader workers: the epoch's order (shuffled
with `seed + epoch`, or by id) is cut into consecutive parts of near-equal samples, one per
rank, then one per worker (see `deal`). Reads run
`read_threads` at a time with at most `prefetch` samples decoded ahead, so a slow store
is waited on in parallel and memory stays bounded. A sample that cannot be read or decoded
is logged (key, modality, reason) and skipped (`on_error="raise"` stops instead).

Samples are read in blocks of up to `block_size` neighbours of one shard (manifest order:
by id, which is their order in the tar): the members of a block that lie less than
MAX_GAP bytes apart in a tar come in one range request per modality, which on object
storage is what makes the stream as fast as reading whole tars. The shuffle permutes the
shards, the blocks within each shard and the samples within each block, and then each
worker's blocks again; `block_size=1` shuffles sample by sample, at one request per sample
and modality. Because the parts are consecutive in that order, a worker reads the blocks of
about 1/(ranks x workers) of the shards (as WebDataset deals whole shards), and opens only
their Zarr stores, while the parts stay within a block of each other in size.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from terramesh_stac.converters.byteindex import fetch_ranges
from terramesh_stac.converters.modalities import CLOUD_MASK_MODALITIES, MODALITY_INFO
from terramesh_stac.converters.zarrzip import LOADER_ARRAYS, CorruptSampleError, read_arrays
from terramesh_stac.ml import cogs
from terramesh_stac.ml.stacks import Stacks
from terramesh_stac.ml.subset import Subset, SubsetError, read, url_options

try:  # a torch Dataset when torch is there (DataLoader workers need it); plain iterable otherwise
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError:  # pragma: no cover - torch is the `ml` extra
    IterableDataset = object

    def get_worker_info():
        return None


logger = logging.getLogger(__name__)
NO_TIME_NS = 1e6  # the loader's rule: DEM stores 0, "no time"
MAX_GAP = 1 << 20  # members this close in a tar are read in one request (skipped bytes: at most 1 MiB)
MAX_BLOCK = 256 << 20  # bytes of one request at most
READ_FROM = ("source", "zarr", "cog")  # the shards' members by byte range, their stacked Zarr stores, the COGs
ASSET_COLUMNS = {"zarr": ("{m}_zarr_stack", "Zarr"), "cog": ("{m}_cog", "COG")}  # read_from -> manifest column


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


def sample_dict(key: str, arrays_of: dict[str, dict[str, np.ndarray]], return_metadata: bool) -> dict:
    """The official loader's dict of one sample from the raw arrays of each modality (as
    converters/zarrzip.read_arrays decodes them from a `.zarr.zip`, or ml/stacks.py from a
    stacked store)."""
    out: dict = {"__key__": key}
    for modality, arrays in arrays_of.items():
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


def member_arrays(key: str, modality: str, data: bytes, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        return read_arrays(data, names)
    except CorruptSampleError as e:
        raise CorruptSampleError(f"{key} {modality}: {e.reason}") from e


def blocks(shards: list[str], block_size: int) -> list[np.ndarray]:
    """Consecutive rows of one shard (its tar's URL), `block_size` at most per block."""
    out, start = [], 0
    for i in range(1, len(shards) + 1):
        if i == len(shards) or shards[i] != shards[start] or i - start == block_size:
            out.append(np.arange(start, i))
            start = i
    return out


def deal(blocks: list[np.ndarray], parts: int, part: int) -> list[np.ndarray]:
    """Part `part` of `blocks` cut into `parts` consecutive runs of near-equal samples: each
    cut at the block boundary nearest to its equal share, so a block is in one part only."""
    edges = np.concatenate([[0], np.cumsum([len(b) for b in blocks])])  # samples before block j

    def cut(k: int) -> int:
        share = edges[-1] * k / parts
        j = int(np.searchsorted(edges, share))
        return j if j == 0 or edges[j] - share < share - edges[j - 1] else j - 1

    return blocks[cut(part) : cut(part + 1)]


def column_or_none(rows, name: str) -> list:
    return rows.column(name).to_pylist() if name in rows.column_names else [None] * rows.num_rows


def item_metadata(rows, modalities: list[str]):
    """What the items give of each sample for the loader's metadata, as the source stores it:
    f(row, modality) -> {center_lon, center_lat: 0-d float64, time: (1,) int64 ns} (no time
    for DEM; S1 modalities have the S1 acquisition, the others the S2 one)."""
    import pyarrow as pa

    lon = rows.column("center_lon").to_numpy(zero_copy_only=False).astype(np.float64)
    lat = rows.column("center_lat").to_numpy(zero_copy_only=False).astype(np.float64)

    def ns(name: str) -> list:
        return rows.column(name).cast(pa.timestamp("ns", "UTC")).cast(pa.int64()).to_pylist()

    times = {"S2": ns("datetime"), "S1": ns("s1_datetime")}

    def of(i: int, modality: str) -> dict:
        out = {"center_lon": np.array(lon[i]), "center_lat": np.array(lat[i])}
        t = times["S1" if modality.startswith("S1") else "S2"][i] if MODALITY_INFO[modality].has_time else None
        if t is not None:
            out["time"] = np.array([t], np.int64)
        return out

    return of


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
        block_size: int = 16,
        read_from: str = "source",
        storage_options: dict | None = None,
        on_error: str = "warn",
    ):
        self.subset = subset if isinstance(subset, Subset) else read(Path(subset).expanduser())
        self.modalities = list(modalities or self.subset.modalities)
        unknown = [m for m in self.modalities if m not in self.subset.modalities]
        if unknown:
            raise SubsetError(f"modalities {unknown} are not in subset {self.subset.name!r} ({self.subset.modalities})")
        if read_threads < 1 or prefetch < 1 or block_size < 1:
            raise ValueError("read_threads, prefetch and block_size must be at least 1")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error={on_error!r}: 'warn' (log and go on) or 'raise'")
        if read_from not in READ_FROM:
            raise ValueError(f"read_from={read_from!r}: one of {', '.join(READ_FROM)}")
        rows = self.subset.rows
        if read_from in ASSET_COLUMNS:
            column, kind = ASSET_COLUMNS[read_from]
            missing = [
                m
                for m in self.modalities
                if column.format(m=m) not in rows.column_names or rows.column(column.format(m=m)).null_count
            ]
            if missing:
                raise SubsetError(
                    f"read_from={read_from!r}: samples of subset {self.subset.name!r} have no {kind} asset of {missing}"
                )
        if read_from == "cog" and "s1_datetime" not in rows.column_names:
            raise SubsetError(f"read_from='cog': subset {self.subset.name!r} predates the COG path: create it again")
        self.on_error, self.read_from = on_error, read_from
        self.return_metadata, self.shuffle, self.seed = return_metadata, shuffle, seed
        self.read_threads, self.prefetch = read_threads, prefetch
        self.storage_options = storage_options or {}
        self.epoch = 0
        self._ids = rows.column("id").to_pylist()
        self._names = LOADER_ARRAYS if return_metadata else ("bands",)
        zarr = read_from == "zarr"
        self._stack_hrefs = {m: rows.column(f"{m}_zarr_stack").to_pylist() for m in self.modalities} if zarr else {}
        self._stacks: Stacks | None = None  # made in each worker process (it holds locks)
        if read_from == "cog":
            self._cogs = {m: column_or_none(rows, f"{m}_cog") for m in ["cloud_mask", *self.modalities]}
            self._cog_sizes = {m: column_or_none(rows, f"{m}_cog_size") for m in self._cogs}
            self._item_meta = item_metadata(rows, self.modalities)
        tars = rows.column(f"{self.modalities[0]}_href").to_pylist()
        self._blocks = blocks(tars, block_size)
        starts = [k for k, b in enumerate(self._blocks) if k == 0 or tars[b[0]] != tars[self._blocks[k - 1][0]]]
        self._shard_runs = list(zip(starts, [*starts[1:], len(self._blocks)]))  # each shard's blocks
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

    def block_order(self) -> list[np.ndarray]:
        """The blocks (row numbers) this rank and worker read this epoch, in order."""
        order = list(self._blocks)  # shard after shard, in manifest order
        rng = np.random.default_rng(self.seed + self.epoch) if self.shuffle else None
        if rng is not None:
            shards = [order[a:b] for a, b in self._shard_runs]
            order = [
                rng.permutation(shards[i][j])
                for i in rng.permutation(len(shards))
                for j in rng.permutation(len(shards[i]))
            ]
        rank, world = rank_and_world()
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        mine = deal(deal(order, world, rank), workers, worker_id)
        return [mine[i] for i in rng.permutation(len(mine))] if rng is not None else mine

    def order(self) -> np.ndarray:
        """Row numbers this rank and worker read this epoch, in order."""
        chosen = self.block_order()
        return np.concatenate(chosen) if chosen else np.array([], dtype=np.int64)

    def _fail(self, reason: str) -> None:
        if self.on_error == "raise":
            raise CorruptSampleError(reason)
        logger.warning("sample skipped: %s", reason)

    def _fetch(self, ranges: list[tuple[str, int, int]]) -> list:
        options = url_options(ranges[0][0], self.storage_options) if ranges else {}
        return fetch_ranges(ranges, MAX_GAP, MAX_BLOCK, **options)

    def _fetch_source(self, rows: np.ndarray, m: str, fetched: list[dict], failed: dict) -> None:
        """Modality m of a block's samples: their `.zarr.zip` byte ranges in the shards."""
        hrefs, offsets, sizes = self._ranges[m]
        for j, data in enumerate(self._fetch([(hrefs[i], offsets[i], sizes[i]) for i in rows])):
            if isinstance(data, Exception):
                failed.setdefault(j, f"{self._ids[rows[j]]} {m}: unreadable: {type(data).__name__}: {data}")
            else:
                fetched[j][m] = data

    def _fetch_zarr(self, rows: np.ndarray, m: str, fetched: list[dict], failed: dict) -> None:
        """Modality m of a block's samples from their shard's stacked store (ml/stacks.py:
        the store and each pixel object's index opened once per process); the chunks of
        the block lie side by side there, and come coalesced like the shards' members."""
        wanted = []
        for j, i in enumerate(rows):
            href, key = self._stack_hrefs[m][i], self._ids[i]
            try:
                for name, where in self._stacks.chunk_ranges(href, key, self._names).items():
                    wanted.append((j, name, where))
                fetched[j][m] = (href, {})
            except (OSError, ValueError, KeyError) as e:  # CorruptSampleError is a ValueError
                failed.setdefault(j, f"{key} {m}: Zarr store unreadable: {getattr(e, 'reason', None) or e}")
        for (j, name, _), data in zip(wanted, self._fetch([w for _, _, w in wanted])):
            if isinstance(data, Exception):
                failed.setdefault(j, f"{self._ids[rows[j]]} {m}: unreadable: {type(data).__name__}: {data}")
            elif m in fetched[j]:
                fetched[j][m][1][name] = data

    def _fetch_cogs(self, rows: np.ndarray, fetched: list[dict], failed: dict) -> None:
        """Every COG of a block's samples (and their cloud masks, for the metadata), whole,
        requested together."""
        wanted = [(j, m, i) for j, i in enumerate(rows) for m in self.modalities]
        if self.return_metadata and any(m in CLOUD_MASK_MODALITIES for m in self.modalities):
            wanted += [(j, "cloud_mask", i) for j, i in enumerate(rows) if self._cogs["cloud_mask"][i]]
        urls = [self._cogs[m][i] for _, m, i in wanted]
        sizes = [self._cog_sizes[m][i] for _, m, i in wanted]
        for (j, m, _), data in zip(wanted, cogs.fetch_objects(urls, sizes, self.storage_options)):
            if isinstance(data, Exception):
                failed.setdefault(j, f"{self._ids[rows[j]]} {m}: unreadable: {type(data).__name__}: {data}")
            else:
                fetched[j][m] = data

    def _fetch_block(self, rows: np.ndarray) -> tuple[list[dict], dict[int, str]]:
        """The stored bytes of every modality of a block's samples, and why some failed."""
        fetched: list[dict] = [{} for _ in rows]
        failed: dict[int, str] = {}
        if self.read_from == "cog":
            self._fetch_cogs(rows, fetched, failed)
        else:
            if self.read_from == "zarr":
                self._stacks.open_all({self._stack_hrefs[m][i] for m in self.modalities for i in rows})
            for m in self.modalities:
                (self._fetch_zarr if self.read_from == "zarr" else self._fetch_source)(rows, m, fetched, failed)
        return fetched, failed

    def _cog_arrays(self, i: int, fetched: dict) -> dict[str, dict[str, np.ndarray]]:
        """The raw arrays of sample i from its COGs, with the item's centre and times."""
        key, out = self._ids[i], {}
        try:  # the sample's one mask (the S2 mask every optical modality holds), decoded once
            mask = cogs.decode(fetched["cloud_mask"], "uint8") if "cloud_mask" in fetched else None
        except CorruptSampleError as e:
            raise CorruptSampleError(f"{key} cloud_mask: {e.reason}") from e
        for m in self.modalities:
            try:
                arrays = {"bands": cogs.decode(fetched[m], MODALITY_INFO[m].dtype)[np.newaxis]}
            except CorruptSampleError as e:
                raise CorruptSampleError(f"{key} {m}: {e.reason}") from e
            if mask is not None and m in CLOUD_MASK_MODALITIES:
                arrays["cloud_mask"] = mask
            out[m] = {**arrays, **self._item_meta(i, m)}
        return out

    def _arrays(self, i: int, stored: dict) -> dict[str, dict[str, np.ndarray]]:
        """The raw arrays of each modality of sample i from its fetched bytes."""
        key = self._ids[i]
        if self.read_from == "cog":
            return self._cog_arrays(i, stored)
        if self.read_from == "source":
            return {m: member_arrays(key, m, data, self._names) for m, data in stored.items()}
        arrays = {}
        for m, (href, chunks) in stored.items():
            try:
                arrays[m] = self._stacks.arrays(href, key, self._names, chunks)
            except CorruptSampleError as e:
                raise CorruptSampleError(f"{key} {m}: {e.reason}") from e
        return arrays

    def _decode(self, block, j: int, i: int) -> dict | None:
        """Sample j of a fetched block (row i), or None (logged) when it cannot be had."""
        fetched, failed = block.result()
        try:
            if j in failed:
                raise CorruptSampleError(failed[j])
            return sample_dict(self._ids[i], self._arrays(i, fetched[j]), self.return_metadata)
        except CorruptSampleError as e:
            self._fail(e.reason)
            return None

    def __iter__(self) -> Iterator[dict]:
        """Blocks are fetched in one pool, samples decoded in another, in order: a sample is
        yielded as soon as it and those before it are decoded, and at most `prefetch` are
        decoded ahead (the fetches of their blocks with them)."""
        if self.read_from == "zarr" and self._stacks is None:
            self._stacks = Stacks(self.storage_options)
        with (
            ThreadPoolExecutor(self.read_threads, thread_name_prefix="terramesh-fetch") as fetch_pool,
            ThreadPoolExecutor(self.read_threads, thread_name_prefix="terramesh-decode") as decode_pool,
        ):
            pending: deque = deque()
            for rows in self.block_order():
                block = fetch_pool.submit(self._fetch_block, rows)
                for j, i in enumerate(rows):
                    pending.append(decode_pool.submit(self._decode, block, j, int(i)))
                    if len(pending) >= self.prefetch and (sample := pending.popleft().result()) is not None:
                        yield sample
            while pending:
                if (sample := pending.popleft().result()) is not None:
                    yield sample

    def __len__(self) -> int:
        """Samples of this rank and worker this epoch."""
        return len(self.order())
