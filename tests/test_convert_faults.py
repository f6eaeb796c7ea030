"""Conversion faults, end to end, as a user meets them: `terramesh-stac convert` in a
subprocess on a full disk (a small tmpfs), a read-only destination (a tmpfs remounted
read-only), an S3 destination without credentials or behind an endpoint that refuses or
never answers (the moto server, a closed port, a socket that never replies), and a kill -9
in the middle of a run.

Each must stop with one line naming the cause (no traceback), exit 1, report what finished,
leave no temporary file, and the same command, once the cause is gone, must end in the same
tree as a clean run (byte for byte, once the destination's own name is taken out).

Mounting needs root: in CI (CI set) a test that cannot mount fails; elsewhere it is skipped
only when not run as root.
"""

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from terramesh_stac.converters.synth import generate

SPLIT, SHARDS, PER_SHARD = "val", 3, 2
CLI = [sys.executable, "-m", "terramesh_stac.cli"]
OK, FAILED = 0, 1
BUCKET = "faults"
# what "fails fast" means here, with the interpreter's start and imports (seconds)
FAST = 30.0


# --- helpers ------------------------------------------------------------------------------


def convert(src: Path, dest: str, *args, env: dict | None = None, cwd: Path, timeout: float = 300):
    """`terramesh-stac convert` as a user runs it; (process, seconds it took)."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "TERRAMESH_SCHEDULER"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [*CLI, "convert", str(src), "--dest", dest, "--workers", "1", "--quiet", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,  # no stray .env
        timeout=timeout,
    )
    return proc, time.monotonic() - t0


def _out(proc) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def assert_stopped_with(proc, cause: str) -> str:
    """Exit 1 and exactly one line on stderr, `error: <cause>...`; no traceback anywhere."""
    assert proc.returncode == FAILED, _out(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {cause}"), _out(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, _out(proc)
    return lines[0].removeprefix("error: ")


def local_files(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} under root, minus reports/ (timings)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).as_posix().startswith("reports/")
    }


def s3_files(endpoint: str, prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=endpoint)
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            rel = obj["Key"].removeprefix(prefix + "/")
            if not rel.startswith("reports/"):
                out[rel] = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return out


def normalised(files: dict[str, bytes], dest_name: str) -> dict[str, bytes]:
    """Items, collection and manifests name the destination: take the name out. A manifest's
    hash of its items file (whose hrefs name it) is checked here, then left out."""
    out = {}
    for rel, data in files.items():
        if rel.startswith("manifests/"):
            manifest = json.loads(data)
            items = files[manifest["items"]["path"]]
            assert manifest["items"].pop("sha256") == hashlib.sha256(items).hexdigest(), rel
            data = json.dumps(manifest, sort_keys=True).encode()
        out[rel] = data.replace(dest_name.encode(), b"<DEST>")
    return out


def assert_same_tree(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    assert sorted(got) == sorted(want), (sorted(set(got) ^ set(want)))[:20]
    assert [k for k in want if got[k] != want[k]] == []
    assert any(k.endswith(".tif") for k in want) and any(k.endswith(".ndjson") for k in want)


def assert_no_temp_files(root: Path) -> None:
    left = [p for p in root.rglob("*") if p.name.startswith(".tmp-")]
    staged = [p for p in (root / ".staging").rglob("*") if p.is_file()] if (root / ".staging").exists() else []
    assert left == [] and staged == [], (left, staged)


def require_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the conversion fault tests mount file systems: CI must run them as root")
        pytest.skip("mounting a tmpfs needs root")


def mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"mount {' '.join(args)} failed (root without CAP_SYS_ADMIN?): {proc.stderr}"


@contextlib.contextmanager
def tmpfs(path: Path, size: int, read_only: bool = False):
    """A tmpfs of `size` bytes at `path` for the duration."""
    require_root()
    path.mkdir(parents=True, exist_ok=True)
    mount("-t", "tmpfs", "-o", f"size={size}" + (",ro" if read_only else ""), "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def tmpfs_bytes(files: dict[str, bytes]) -> int:
    """What the files take on a tmpfs: whole 4 KiB pages."""
    return sum(-(-len(data) // 4096) * 4096 for data in files.values())


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """3 shards x 2 generated samples (two Major TOM shards, one SSL4EO-S12)."""
    root = tmp_path_factory.mktemp("faults-source")
    generate(root, split=SPLIT, shards=SHARDS, samples_per_shard=PER_SHARD, seed=5)
    return root


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> dict[str, bytes]:
    """A clean run's tree (local), destination name taken out."""
    base = tmp_path_factory.mktemp("faults-reference")
    proc, _ = convert(source, str(base / "out"), cwd=base)
    assert proc.returncode == OK, _out(proc)
    return normalised(local_files(base / "out"), str(base / "out"))


@pytest.fixture(scope="module")
def s3_reference(source, s3_server, tmp_path_factory) -> dict[str, bytes]:
    """A clean run's tree on S3 (hrefs and alternates are S3's), destination name taken out."""
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=BUCKET)
    env = {**os.environ, "TERRAMESH_S3_ENDPOINT_URL": s3_server}
    proc, _ = convert(source, f"s3://{BUCKET}/reference", env=env, cwd=tmp_path_factory.mktemp("faults-s3"))
    assert proc.returncode == OK, _out(proc)
    return normalised(s3_files(s3_server, "reference"), f"{BUCKET}/reference")


# --- local destinations ---------------------------------------------------------------------


def test_disk_full_stops_reports_what_finished_and_resumes(source, reference, tmp_path):
    # room for the first shard, not for the second: one worker converts them in order
    size = tmpfs_bytes(reference) // 2
    with tmpfs(tmp_path / "disk", size) as disk:
        dest = disk / "out"
        report_file = tmp_path / "report.json"  # on another disk, as a user would put it
        proc, _ = convert(source, str(dest), "--report", report_file, cwd=tmp_path)
        cause = assert_stopped_with(proc, f"destination full: No space left on device writing {dest}/")
        assert "STOPPED" in proc.stdout, _out(proc)
        report = json.loads(report_file.read_text())
        assert report["stopped"] == cause
        finished = [r["shard"] for r in report["shard_reports"]]
        assert finished and report["unfinished"], report  # the disk filled in the middle
        assert sorted(finished + [u.split("/", 1)[1] for u in report["unfinished"]]) == sorted(
            p.name for p in (source / SPLIT / "DEM").iterdir()
        )
        for shard in finished:  # what the report calls finished is finished at the destination
            assert (dest / "manifests" / SPLIT / shard.replace(".tar", ".json")).is_file(), shard
        assert len(list((dest / "manifests" / SPLIT).glob("*.json"))) == len(finished)
        assert report["samples"]["total"] == len(finished) * PER_SHARD
        assert_no_temp_files(dest)

        mount("-o", f"remount,size={4 * size}", str(disk))  # the cause removed
        again, _ = convert(source, str(dest), cwd=tmp_path)
        assert again.returncode == OK, _out(again)
        assert_same_tree(normalised(local_files(dest), str(dest)), reference)
        assert_no_temp_files(dest)


def test_read_only_destination_stops_before_any_work_and_resumes(source, reference, tmp_path):
    with tmpfs(tmp_path / "disk", 4 * tmpfs_bytes(reference)) as disk:
        dest = disk / "out"
        first, _ = convert(source, str(dest), "--max-shards", 1, cwd=tmp_path)  # some work done
        assert first.returncode == OK, _out(first)
        before = local_files(dest)

        mount("-o", "remount,ro", str(disk))  # e.g. remounted read-only after disk errors
        report_file = tmp_path / "report.json"
        proc, seconds = convert(source, str(dest), "--report", report_file, cwd=tmp_path)
        cause = assert_stopped_with(proc, f"destination read-only: Read-only file system writing {dest}")
        assert seconds < FAST, seconds
        assert json.loads(report_file.read_text())["stopped"] == cause
        assert local_files(dest) == before

        mount("-o", "remount,rw", str(disk))
        again, _ = convert(source, str(dest), cwd=tmp_path)
        assert again.returncode == OK, _out(again)
        assert "skipped 1 already done" in again.stdout, _out(again)
        assert_same_tree(normalised(local_files(dest), str(dest)), reference)
        assert_no_temp_files(dest)


@pytest.mark.subprocess
def test_kill_9_in_the_middle_then_the_same_command_converges(source, reference, tmp_path):
    dest = tmp_path / "out"
    args = [*CLI, "convert", str(source), "--dest", str(dest), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(
        args, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    manifests = dest / "manifests" / SPLIT
    deadline = time.monotonic() + 300
    while proc.poll() is None and not (manifests.is_dir() and any(manifests.iterdir())):
        assert time.monotonic() < deadline, "no shard finished in 300 s"
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before a kill could land: " + proc.stdout.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its Dask workers at once
    proc.wait()
    done = len(list(manifests.glob("*.json")))
    assert 1 <= done < SHARDS, f"{done} shards finished: the kill did not land in the middle"

    again, _ = convert(source, str(dest), cwd=tmp_path)
    assert again.returncode == OK, _out(again)
    assert f"skipped {done} already done" in again.stdout, _out(again)
    assert_same_tree(normalised(local_files(dest), str(dest)), reference)
    assert_no_temp_files(dest)


# --- S3 destinations ------------------------------------------------------------------------


def no_credentials_env(home: Path) -> dict:
    """The environment without any AWS credential botocore could find."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    }
    return {
        **env,
        "HOME": str(home),
        "AWS_CONFIG_FILE": str(home / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def test_missing_s3_credentials_fail_fast_and_resume(source, s3_server, s3_reference, tmp_path):
    prefix = "no-credentials"
    env = {**no_credentials_env(tmp_path), "TERRAMESH_S3_ENDPOINT_URL": s3_server}
    proc, seconds = convert(source, f"s3://{BUCKET}/{prefix}", env=env, cwd=tmp_path)
    assert_stopped_with(proc, f"no S3 credentials for s3://{BUCKET}/{prefix}: Unable to locate credentials")
    assert "AWS_ACCESS_KEY_ID" in proc.stderr  # says what to set
    assert seconds < FAST, seconds
    assert s3_files(s3_server, prefix) == {}  # nothing written, not even the probe

    again, _ = convert(
        source, f"s3://{BUCKET}/{prefix}", env={**os.environ, "TERRAMESH_S3_ENDPOINT_URL": s3_server}, cwd=tmp_path
    )
    assert again.returncode == OK, _out(again)
    assert_same_tree(normalised(s3_files(s3_server, prefix), f"{BUCKET}/{prefix}"), s3_reference)
    assert not [k for k in s3_files(s3_server, prefix) if ".tmp-" in k]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_s3_endpoint_fails_fast_and_resumes(source, s3_server, s3_reference, tmp_path):
    prefix, dest = "unreachable", f"s3://{BUCKET}/unreachable"
    refused = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    proc, seconds = convert(source, dest, env={**os.environ, "TERRAMESH_S3_ENDPOINT_URL": refused}, cwd=tmp_path)
    assert_stopped_with(proc, f"S3 endpoint unreachable: cannot connect to {refused} writing {dest}")
    assert seconds < FAST, seconds

    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        proc, seconds = convert(source, dest, env={**os.environ, "TERRAMESH_S3_ENDPOINT_URL": url}, cwd=tmp_path)
    assert_stopped_with(proc, f"S3 endpoint unreachable: no answer in time from {url} writing {dest}")
    assert seconds < FAST + 10, seconds  # two attempts of the probe's 5 s read timeout
    assert s3_files(s3_server, prefix) == {}

    again, _ = convert(source, dest, env={**os.environ, "TERRAMESH_S3_ENDPOINT_URL": s3_server}, cwd=tmp_path)
    assert again.returncode == OK, _out(again)
    assert_same_tree(normalised(s3_files(s3_server, prefix), f"{BUCKET}/{prefix}"), s3_reference)
