"""Stream the samples of one shard: all its modality tars read in lockstep, member by member.

The modality tars of a shard hold the same keys in the same order, so one pass over all of
them yields whole samples without ever holding a shard in memory. Real files may not keep
that promise (a tar short of a sample, keys out of order, a truncated upload), so samples
are matched by key with a bounded look-ahead, and every disagreement is reported as a
SampleError while the rest of the shard goes on.

What `iter_samples` yields, in stream order:
- SampleError for each problem; the errors of a key come right before that key's Sample.
  A problem of a whole tar (missing, unreadable from the start, cut short) is reported for
  every sample it took a modality from, with that sample's key: users need to know which
  samples lost what, not only that a tar broke;
- Sample for every sample of the shard, exactly once: every key seen in at least one
  modality tar, then the keys the metadata names for this shard that no tar held (a tar
  cut short before them). It holds the modalities that decoded (a corrupt member or a
  missing one is left out and reported); none at all when every one failed.
- `Sample.metadata` is the key's row of the metadata dict, or None when the dict is None
  or has no row for the key (not reported here: the caller decides whether that matters).
"""

from __future__ import annotations

import contextlib
import tarfile
from collections import OrderedDict
from collections.abc import Iterator

from .metadata import key_of_member
from .modalities import MODALITIES, S1_MODALITY, SOURCES, modalities_for_source
from .retry import is_transient
from .sample import Sample, SampleError, SourceMember
from .zarrzip import CorruptSampleError, decode_zarr_zip

MEMBER_SUFFIX = ".zarr.zip"
# Members buffered per modality while looking for a key that is late or missing.
LOOKAHEAD = 16


def source_of_shard(shard: str) -> str | None:
    """`majortom_shard_000001.tar` -> `majortom`; None for an unknown prefix."""
    s = shard.split("_shard_", 1)[0]
    return s if s in SOURCES else None


def shard_modalities(shard: str, modalities=None) -> tuple[list[str], set[str]]:
    """(modalities to open, those whose absence is normal). A source has one S1 version:
    the other one is not opened; for an unknown source both are tried, absence quiet."""
    wanted = [m for m in MODALITIES if modalities is None or m in modalities]
    source = source_of_shard(shard)
    if source is not None:
        have = set(modalities_for_source(source))
        return [m for m in wanted if m in have], set()
    return wanted, set(S1_MODALITY.values())


class _Stream:
    """One modality tar read member by member; remembers whether it broke."""

    def __init__(self, modality: str, shard: str, fileobj, index=None, tar_url: str = ""):
        self.modality, self.shard = modality, shard
        self.index, self.tar_url = index, tar_url
        self.buffer: OrderedDict[str, SourceMember] = OrderedDict()
        self.errors: list[SampleError] = []  # reported by the caller at the next chance
        self.done = False
        self.broken: str | None = None  # why the tar ended early (truncated, corrupt)
        self._tar = tarfile.open(fileobj=fileobj, mode="r|*")
        self._members = iter(self._tar)
        self._last = None

    def pull(self) -> bool:
        """Read the next sample member into the buffer; False when the tar is over."""
        while not self.done:
            try:
                member = next(self._members)
                if not member.isfile():
                    continue
                name = member.name.removeprefix("./")
                if not name.endswith(MEMBER_SUFFIX):
                    problem = f"not a zarr.zip member: {name}"
                    self._index(member, name, problem=problem)
                    self.errors.append(SampleError(key_of_member(name), self.shard, self.modality, problem))
                    continue
                data = self._tar.extractfile(member).read()
                if len(data) != member.size:
                    self._index(member, name, problem="member cut short (tar truncated)")
                    raise EOFError(f"member {name} cut short")
            except StopIteration:
                self.done = True
                return False
            except (tarfile.TarError, EOFError, OSError, ValueError) as e:
                if is_transient(e):  # a network hiccup, not a broken tar: the shard is retried
                    raise
                after = f" after {self._last}" if self._last else ""
                # reported with each sample it takes this modality from (see iter_samples)
                self.broken = f"tar unreadable{after}: {type(e).__name__}: {e}"
                self.done = True
                return False
            key = key_of_member(name)
            self._last = name
            if key in self.buffer:
                self._index(member, name, problem="duplicate key in tar")
                self.errors.append(SampleError(key, self.shard, self.modality, "duplicate key in tar"))
                continue
            self._index(member, name, data=data)
            self.buffer[key] = SourceMember(self.tar_url, member.offset_data, data, member.name)
            return True
        return False

    def _index(self, member: tarfile.TarInfo, name: str, data: bytes | None = None, problem: str | None = None) -> None:
        if self.index is not None:
            self.index.add(
                key=key_of_member(name),
                modality=self.modality,
                tar_url=self.tar_url,
                member=member.name,
                offset=member.offset_data,
                size=member.size,
                data=data,
                problem=problem,
            )

    def take(self, key: str) -> tuple[SourceMember | None, bool]:
        """(member of `key` or None, whether other keys came first = order differs)."""
        while key not in self.buffer and len(self.buffer) < LOOKAHEAD and self.pull():
            pass
        if key not in self.buffer:
            return None, False
        in_order = next(iter(self.buffer)) == key
        return self.buffer.pop(key), not in_order

    def head(self) -> str | None:
        if not self.buffer:
            self.pull()
        return next(iter(self.buffer), None)


def iter_samples(
    source, split: str, shard: str, modalities=None, metadata: dict | None = None, index=None
) -> Iterator[Sample | SampleError]:
    """Samples of `shard` (see the module doc for what is yielded and when). With `index`
    (a terramesh_stac.converters.byteindex.ShardIndex), every tar member read is recorded in it."""
    to_open, quiet = shard_modalities(shard, modalities)
    with contextlib.ExitStack() as stack:
        streams: list[_Stream] = []
        absent: dict[str, str] = {}  # modality -> why none of its members can be read
        for m in to_open:
            try:
                f = stack.enter_context(source.open_shard(split, m, shard))
            except FileNotFoundError:
                if m not in quiet:
                    absent[m] = "modality tar missing for this shard"
                continue
            try:
                streams.append(_Stream(m, shard, f, index, source.shard_url(split, m, shard)))
            except (tarfile.TarError, EOFError, OSError) as e:
                if is_transient(e):
                    raise
                absent[m] = f"not a readable tar: {type(e).__name__}: {e}"
        seen, hit = set(), set()  # keys yielded; modalities whose tar problem some key had
        while streams:
            # the first stream with anything left leads; its next key is the next sample
            key, lead = None, None
            for s in streams:
                if (key := s.head()) is not None:
                    lead = s
                    break
            pending = [e for s in streams for e in s.errors]
            for s in streams:
                s.errors.clear()
            yield from pending
            if key is None:
                break
            seen.add(key)
            sample = Sample(key=key, split=split, shard=shard, metadata=_row(metadata, key))
            errors = [SampleError(key, shard, m, reason) for m, reason in absent.items()]
            hit |= set(absent)
            for s in streams:
                member, out_of_order = s.take(key)
                errors += s.errors
                s.errors.clear()
                if member is None:
                    if s.broken:
                        hit.add(s.modality)
                    reason = s.broken or f"sample missing from {s.modality} tar (present in {lead.modality})"
                    errors.append(SampleError(key, shard, s.modality, reason))
                    continue
                if out_of_order:
                    errors.append(
                        SampleError(
                            key,
                            shard,
                            s.modality,
                            f"keys of the {s.modality} tar are not in the order of the {lead.modality} tar",
                        )
                    )
                try:
                    sample.modalities[s.modality] = decode_zarr_zip(member.data)
                    sample.originals[s.modality] = member
                except CorruptSampleError as e:
                    errors.append(SampleError(key, shard, s.modality, f"corrupt member: {e.reason}"))
            yield from errors
            yield sample
        # samples the metadata places in this shard that no tar held (every tar cut before them)
        for key, row in (metadata or {}).items():
            if key in seen or row.get("tar", shard) != shard:
                continue
            for m, reason in absent.items():
                yield SampleError(key, shard, m, reason)
            for s in streams:
                reason = s.broken or f"sample missing from {s.modality} tar (listed in the metadata parquet)"
                yield SampleError(key, shard, s.modality, reason)
            hit |= set(absent) | {s.modality for s in streams if s.broken}
            yield Sample(key=key, split=split, shard=shard, metadata=row)
        # a tar problem that took nothing from any known sample is still reported, for the shard
        for m, reason in [*absent.items(), *((s.modality, s.broken) for s in streams if s.broken)]:
            if m not in hit:
                yield SampleError(None, shard, m, reason)


def _row(metadata: dict | None, key: str) -> dict | None:
    return metadata.get(key) if metadata is not None else None
