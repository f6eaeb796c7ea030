"""Bad input, end to end (issue 4, item 6): one generated source, one kind of damage per shard.

Damaged: a corrupt zip member, a zip member cut short (the tar is fine), a tar cut inside a
member, an extra key in one modality tar, a sample missing from one modality tar, a
non-zarr member, a shard whose tar is missing in one modality, a sample without a row in
the metadata parquet, a shard whose every tar is cut at the same sample. The CLI converts it
once on two Dask workers; every problem must be in the machine-readable report (key, shard,
modality, reason: a broken or missing tar once per sample it took a modality from),
everything else converted, the sample counts must add up (in the report and on the progress
display), exit status 3 (partial); a second identical run converts nothing and still says
partial.
"""

import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from terramesh_stac.converters.metadata import key_of_member
from terramesh_stac.converters.modalities import MODALITIES, S1_MODALITY, modalities_for_source
from terramesh_stac.converters.synth import _tar_member as write_member
from terramesh_stac.converters.synth import generate

SPLIT = "val"
SHARDS, PER_SHARD = 9, 3  # synth: 6 majortom shards, then 3 ssl4eos12 shards
PARTIAL = 3
CLI = [sys.executable, "-m", "terramesh_stac.cli"]


@dataclass
class Damage:
    """What one case did to the source: the problems it must cause, the modalities it took."""

    case: str
    shard: str
    # (key, modality, substring of the reason) of every problem the damage must cause
    problems: list[tuple] = field(default_factory=list)
    lost: dict[str, set] = field(default_factory=dict)  # key -> modalities it no longer has
    extra_keys: list[str] = field(default_factory=list)  # keys the damage added
    failed: list[str] = field(default_factory=list)  # keys left with no modality: no item


def rewrite_tar(path: Path, edit) -> None:
    """Rewrite a tar in place: `edit(list of (name, bytes)) -> list of (name, bytes)`."""
    with tarfile.open(path) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    edited = edit(members)
    with tarfile.open(path, "w") as tf:
        for name, data in edited:
            write_member(tf, name, data)  # as the generator writes members


def replace_member(index: int, damage):
    """An `edit` for rewrite_tar: member `index`'s bytes become damage(bytes)."""

    def edit(members):
        name, data = members[index]
        return [*members[:index], (name, damage(data)), *members[index + 1 :]]

    return edit


def garbage_inside(data: bytes) -> bytes:
    """Same length, same zip structure, 256 bytes of the pixel data overwritten."""
    at = len(data) // 3
    return data[:at] + bytes(range(256)) + data[at + 256 :]


def source_of(name: str) -> str:
    """`majortom_shard_000001.tar` or `majortom_val_0000001` -> `majortom`."""
    return name.split("_", 1)[0]


def damage_source(root: Path, shard_keys: dict[str, list[str]]) -> list[Damage]:
    """One case per shard; what each case must cause is written down next to the damage."""
    majortom = [s for s in shard_keys if source_of(s) == "majortom"]
    ssl = [s for s in shard_keys if source_of(s) == "ssl4eos12"]
    assert len(majortom) >= 6 and len(ssl) >= 3, shard_keys
    tar = lambda modality, shard: root / SPLIT / modality / shard  # noqa: E731
    cases = []

    shard = majortom[0]
    key = shard_keys[shard][1]
    rewrite_tar(tar("NDVI", shard), replace_member(1, garbage_inside))
    cases.append(Damage("corrupt zip member", shard, [(key, "NDVI", "corrupt member")], {key: {"NDVI"}}))

    shard = majortom[1]
    key = shard_keys[shard][1]
    rewrite_tar(tar("DEM", shard), replace_member(1, lambda data: data[: len(data) // 2]))
    cases.append(
        Damage("truncated zip member", shard, [(key, "DEM", "corrupt member: not a readable zip")], {key: {"DEM"}})
    )

    shard = majortom[2]
    keys = shard_keys[shard]
    path = tar(S1_MODALITY["majortom"], shard)
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    assert [key_of_member(m.name) for m in members] == keys
    cut = members[1].offset_data + members[1].size // 2
    path.write_bytes(path.read_bytes()[:cut])
    cases.append(
        Damage(
            "truncated tar",
            shard,
            [(k, S1_MODALITY["majortom"], f"tar unreadable after {keys[0]}.zarr.zip") for k in keys[1:]],
            {k: {S1_MODALITY["majortom"]} for k in keys[1:]},
        )
    )

    shard = majortom[3]
    extra = f"majortom_{SPLIT}_9999999"
    assert extra not in {k for ks in shard_keys.values() for k in ks}
    host = "NDVI"  # dated by the S2 time: with no metadata row, a DEM-only sample has no datetime
    rewrite_tar(tar(host, shard), lambda ms: [*ms, (f"{extra}.zarr.zip", ms[-1][1])])
    others = [m for m in modalities_for_source("majortom") if m != host]
    cases.append(
        Damage(
            "extra key in one modality tar",
            shard,
            [(extra, m, f"sample missing from {m} tar (present in {host})") for m in others]
            + [(extra, None, f"no row in {SPLIT}_metadata.parquet")],
            {extra: set(others)},
            [extra],
        )
    )

    shard = majortom[4]
    key = shard_keys[shard][1]
    rewrite_tar(tar("LULC", shard), lambda ms: [m for m in ms if key_of_member(m[0]) != key])
    cases.append(
        Damage(
            "sample missing from one modality tar",
            shard,
            [(key, "LULC", "sample missing from LULC tar")],
            {key: {"LULC"}},
        )
    )

    shard = majortom[5]
    rewrite_tar(tar("NDVI", shard), lambda ms: [ms[0], ("foo.txt", b"not a sample\n"), *ms[1:]])
    cases.append(Damage("non-zarr member", shard, [("foo", "NDVI", "not a zarr.zip member: foo.txt")]))

    shard = ssl[0]
    s1 = S1_MODALITY["ssl4eos12"]
    tar(s1, shard).unlink()
    cases.append(
        Damage(
            "modality tar missing",
            shard,
            [(k, s1, "modality tar missing for this shard") for k in shard_keys[shard]],
            {k: {s1} for k in shard_keys[shard]},
        )
    )

    shard = ssl[1]
    key = shard_keys[shard][1]
    path = root / f"{SPLIT}_metadata.parquet"
    table = pq.read_table(path)
    pq.write_table(table.filter(pc.not_equal(table["zarr"], f"{key}.zarr.zip")), path)
    cases.append(
        Damage("sample missing from the metadata parquet", shard, [(key, None, f"no row in {SPLIT}_metadata.parquet")])
    )

    shard = ssl[2]
    keys = shard_keys[shard]
    tars = sorted((root / SPLIT).glob(f"*/{shard}"))
    for path in tars:  # every modality cut inside the second sample: the rest only the metadata names
        with tarfile.open(path) as tf:
            second = tf.getmembers()[1]
        path.write_bytes(path.read_bytes()[: second.offset_data + second.size // 2])
    cases.append(
        Damage(
            "every tar cut at the same sample",
            shard,
            [(k, p.parent.name, f"tar unreadable after {keys[0]}.zarr.zip") for k in keys[1:] for p in tars],
            failed=keys[1:],
        )
    )

    assert len({c.shard for c in cases}) == len(cases)  # each case in its own shard
    return cases


def run_convert(src: Path, dest: Path, report: Path, quiet: bool = True) -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items() if k != "TERRAMESH_SCHEDULER"}
    proc = subprocess.run(
        [*CLI, "convert", str(src), "--dest", str(dest), "--workers", "2", "--report", str(report)]
        + ["--quiet"] * quiet,
        capture_output=True,
        text=True,
        env=env,
        cwd=report.parent,
        timeout=600,
    )
    assert report.exists(), f"no report; exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads(report.read_text())


@dataclass
class Run:
    src: Path
    dest: Path
    shard_keys: dict  # shard -> keys in it, read from the source before the damage
    cases: list
    proc: subprocess.CompletedProcess
    report: dict


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    base = tmp_path_factory.mktemp("bad-input")
    src = base / "src"
    generate(src, split=SPLIT, shards=SHARDS, samples_per_shard=PER_SHARD, seed=11)
    table = pq.read_table(src / f"{SPLIT}_metadata.parquet", columns=["tar", "zarr"]).to_pylist()
    shard_keys = {}
    for row in table:
        shard_keys.setdefault(row["tar"], []).append(key_of_member(row["zarr"]))
    cases = damage_source(src, dict(sorted(shard_keys.items())))
    # with the progress display: not a terminal, so rich prints its last frame
    proc, report = run_convert(src, base / "dest", base / "report.json", quiet=False)
    return Run(src, base / "dest", shard_keys, cases, proc, report)


def read_items(dest: Path) -> dict[str, dict[str, dict]]:
    """shard file name -> {item id: item} of items/<split>/<shard>.ndjson."""
    out = {}
    for path in sorted((dest / "items" / SPLIT).glob("*.ndjson")):
        items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.stem + ".tar"] = {i["id"]: i for i in items}
        assert len(out[path.stem + ".tar"]) == len(items), f"duplicate ids in {path}"
    return out


def _summary(proc) -> str:
    return f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_exit_status_is_partial(run):
    assert run.proc.returncode == PARTIAL, _summary(run.proc)
    assert "PARTIAL" in run.proc.stdout


def test_every_problem_reported_with_key_shard_modality_reason(run):
    got = {}
    for e in run.report["errors"]:
        assert set(e) == {"key", "shard", "modality", "reason"}, e
        got.setdefault((e["key"], e["shard"], e["modality"]), []).append(e["reason"])
    expected = {(key, c.shard, modality): (c.case, text) for c in run.cases for key, modality, text in c.problems}
    missing = {k: v for k, v in expected.items() if k not in got}
    unexpected = {k: v for k, v in got.items() if k not in expected}
    assert not missing and not unexpected, f"missing: {missing}\nunexpected: {unexpected}"
    for where, (case, text) in expected.items():
        reasons = got[where]
        assert len(reasons) == 1 and text in reasons[0], f"{case} {where}: {reasons}, wanted {text!r}"


def test_everything_else_is_converted(run):
    items = read_items(run.dest)
    extra = {c.shard: c.extra_keys for c in run.cases}
    failed = {k for c in run.cases for k in c.failed}
    for shard, keys in run.shard_keys.items():
        assert set(items.get(shard, {})) == (set(keys) | set(extra.get(shard, []))) - failed, shard
    for shard_items in items.values():
        for item in shard_items.values():
            for name, asset in item["assets"].items():
                assert Path(asset["href"]).is_file(), (item["id"], name, asset["href"])


def test_damaged_samples_keep_their_intact_modalities(run):
    items = {k: v for shard_items in read_items(run.dest).values() for k, v in shard_items.items()}
    lost = {k: m for c in run.cases for k, m in c.lost.items()}
    extra = {k for c in run.cases for k in c.extra_keys}
    failed = {k for c in run.cases for k in c.failed}
    assert not failed & set(items)
    # the assets of an intact sample, per source; all intact samples of a source agree
    full = {}
    for shard, keys in run.shard_keys.items():
        for key in keys:
            if key not in lost and key not in failed:
                full.setdefault(source_of(shard), set()).add(frozenset(converted_assets(items[key])))
    for source, variants in full.items():
        assert len(variants) == 1, (source, variants)
        full[source] = set(next(iter(variants)))
        assert set(modalities_for_source(source)) <= full[source], (source, full[source])
    assert set(full) == {"majortom", "ssl4eos12"}
    for key, modalities in lost.items():
        assert key in items, f"{key} lost {modalities} but should keep an item with the rest"
        assets = converted_assets(items[key])
        if key in extra:  # only the modality the key was added to
            assert (
                assets <= full[source_of(key)]
                and assets & set(MODALITIES) == set(modalities_for_source(source_of(key))) - modalities
            ), (key, assets)
        else:
            assert assets == full[source_of(key)] - modalities, (key, assets)
        for m in modalities:
            assert not list((run.dest / "assets" / key).glob(f"{m}.*")), (key, m)


def converted_assets(item: dict) -> set[str]:
    """Asset keys of what was converted (not the `<MODALITY>_source` pointers to the originals)."""
    return {k for k in item["assets"] if not k.endswith("_source")}


def test_shard_reports_agree_with_the_run_report(run):
    by_shard = {r["shard"]: r for r in run.report["shard_reports"]}
    assert set(by_shard) == set(run.shard_keys)
    assert run.report["errors"] == [e for s in sorted(by_shard) for e in by_shard[s]["errors"]]
    items = read_items(run.dest)
    for shard, r in by_shard.items():
        assert not r["skipped"], shard
        on_disk = json.loads((run.dest / "reports" / SPLIT / shard.replace(".tar", ".json")).read_text())
        for name in ("split", "shard", "items", "errors", "content_id"):
            assert on_disk[name] == r[name], (shard, name)
        assert r["items"] == len(items[shard]), shard
        assert (run.dest / "manifests" / SPLIT / shard.replace(".tar", ".json")).is_file(), shard
    assert run.report["items"] == sum(len(v) for v in items.values())


def test_sample_counts_add_up(run):
    """Every sample once: converted (no problem), partial (an item, with problems), failed
    (no item); metadata rows plus the samples they lack = the samples the shards hold."""
    samples = {k for keys in run.shard_keys.values() for k in keys} | {k for c in run.cases for k in c.extra_keys}
    failed = {k for c in run.cases for k in c.failed}
    with_problems = {key for c in run.cases for key, _, _ in c.problems if key in samples}
    rows = pq.read_table(run.src / f"{SPLIT}_metadata.parquet", columns=["zarr"]).num_rows
    want = {
        "total": len(samples),
        "converted": len(samples - with_problems),
        "partial": len(with_problems - failed),
        "failed": len(failed),
        "in_metadata": rows,
        "not_in_metadata": len(samples) - rows,
    }
    assert want["not_in_metadata"] == 2  # the extra key and the row removed
    assert run.report["samples"] == want
    for r in run.report["shard_reports"]:
        c = r["samples"]
        assert c["total"] == c["converted"] + c["partial"] + c["failed"] == c["in_metadata"] + c["not_in_metadata"]
        assert c["converted"] + c["partial"] == r["items"], r["shard"]
    summary = (
        f"samples: {want['total']} ({rows} in the metadata parquet, 2 not in it): {want['converted']} converted, "
        f"{want['partial']} partial, {want['failed']} failed"
    )
    assert summary in run.proc.stdout, run.proc.stdout
    # the progress display's last frame: every sample counted once, against the same total
    bar = [line for line in run.proc.stdout.splitlines() if line.startswith("samples ")]
    assert bar and f" {want['total']}/{want['total']} " in bar[-1], bar


def snapshot(dest: Path) -> dict[str, tuple[bytes, int]]:
    """{relative path: (bytes, mtime_ns)} of the destination, minus the run's own report."""
    return {
        p.relative_to(dest).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(dest.rglob("*"))
        if p.is_file() and p.relative_to(dest).as_posix() != "reports/run.json"
    }


@pytest.fixture(scope="module")
def second_run(run, tmp_path_factory):
    before = snapshot(run.dest)
    proc, report = run_convert(run.src, run.dest, tmp_path_factory.mktemp("bad-input-again") / "report.json")
    return before, snapshot(run.dest), proc, report


def test_second_run_converts_nothing(run, second_run):
    before, after, proc, report = second_run
    assert {r["shard"] for r in report["shard_reports"]} == set(run.shard_keys)
    assert [r["shard"] for r in report["shard_reports"] if not r["skipped"]] == [], _summary(proc)
    assert report["items"] == run.report["items"]
    assert set(after) == set(before)
    for rel in before:
        if rel != "collection.json":  # rewritten each run, same content
            assert after[rel] == before[rel], f"{rel} was rewritten"
        assert after[rel][0] == before[rel][0], f"{rel} changed"


def test_second_run_is_still_partial(run, second_run):
    _, _, proc, report = second_run
    assert proc.returncode == PARTIAL, _summary(proc)

    def problems(r):
        return sorted((e["key"] or "", e["shard"], e["modality"] or "", e["reason"]) for e in r["errors"])

    assert problems(report) == problems(run.report)
