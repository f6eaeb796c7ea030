"""The mosaic seeded ahead for the map's tile zooms 11-13 (catalog/mosaic_cache.py): `terramesh-stac
db mosaic` run as a user runs it against the test cluster, its tiles served by the live server
at /vector/mosaic and compared with the live mosaic they stand for; a load retires them; a
tile the service fails on is reported and the rest is seeded."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import morecantile
import numpy as np
import pytest
from PIL import Image

from terramesh_stac.catalog import mosaic_cache
from terramesh_stac.catalog.tile_cache import IMMUTABLE, REVISION_TTL, SHORT_TTL
from terramesh_stac.exits import EXIT_PARTIAL, EXIT_USAGE
from tests.conftest import API_COLLECTION_ID, cluster_env

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
RENDER = "true_color"


def _cli(pgstac_db, *args: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        **cluster_env(pgstac_db),
    }
    cmd = [sys.executable, "-m", "terramesh_stac.cli", "db", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _seed(pgstac_db, *extra: str) -> subprocess.CompletedProcess:
    return _cli(pgstac_db, "mosaic", "--collection", API_COLLECTION_ID, "--render", RENDER, *extra)


def _revision(base: str) -> dict:
    time.sleep(REVISION_TTL + 0.2)  # the service caches a revision this long
    return httpx.get(f"{base}/vector/revision", params={"collection": API_COLLECTION_ID}, timeout=30).json()


def _seeded(base: str, z: int, x: int, y: int, **params) -> httpx.Response:
    url = f"{base}/vector/mosaic/{RENDER}/{z}/{x}/{y}.webp"
    return httpx.get(url, params={"collection": API_COLLECTION_ID, **params}, timeout=30)


def _live(base: str, z: int, x: int, y: int) -> np.ndarray | None:
    url = f"{base}/raster/collections/{API_COLLECTION_ID}/tiles/WebMercatorQuad/{z}/{x}/{y}.png"
    r = httpx.get(url, params={"render": RENDER}, timeout=60)
    if r.status_code in (204, 404):
        return None
    assert r.status_code == 200, r.text
    return _rgba(r.content)


def _rgba(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")).astype(np.int16)


def _tile_at(item: dict, z: int) -> tuple[int, int]:
    w, s, e, n = item["bbox"]
    t = WEB_MERCATOR.tile((w + e) / 2, (s + n) / 2, z)
    return t.x, t.y


def _close(seeded: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(share of pixels whose opacity agrees, mean RGB difference where both are opaque)."""
    opaque_a, opaque_b = seeded[..., 3] > 127, expected[..., 3] > 127
    agree = float((opaque_a == opaque_b).mean())
    both = opaque_a & opaque_b
    return agree, float(np.abs(seeded[..., :3] - expected[..., :3])[both].mean())


@pytest.fixture(scope="module")
def seeded(pgstac_db, api_catalog, live_server):
    proc = _seed(pgstac_db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_seeding_covers_every_sample_at_zooms_11_to_13(seeded, api_catalog, live_server):
    _, _, items = api_catalog
    assert f"mosaic of {API_COLLECTION_ID!r} seeded with render {RENDER!r}" in seeded and "0 failed" in seeded
    info = _revision(live_server)
    assert info["seeded_mosaic"] == {RENDER: {"minzoom": 11, "maxzoom": 13}}
    for item in items:
        for z in (11, 12, 13):
            x, y = _tile_at(item, z)
            r = _seeded(live_server, z, x, y, v=info["revision"])
            assert r.status_code == 200 and r.headers["content-type"] == "image/webp", (item["id"], z, r.text)
            assert r.headers["cache-control"] == IMMUTABLE  # asked for the revision it was seeded for
            rgba = _rgba(r.content)
            # the sample's centre is drawn: opaque pixels in the 16 px around it
            w, s, e, n = item["bbox"]
            px = WEB_MERCATOR.xy((w + e) / 2, (s + n) / 2)
            b = WEB_MERCATOR.xy_bounds(morecantile.Tile(x, y, z))
            col = int((px.x - b.left) / (b.right - b.left) * 256)
            row = int((b.top - px.y) / (b.top - b.bottom) * 256)
            assert rgba[max(row - 8, 0) : row + 8, max(col - 8, 0) : col + 8, 3].max() == 255, (item["id"], z)


def test_seeded_tiles_are_the_live_mosaic(seeded, api_catalog, live_server):
    _, _, items = api_catalog
    neighbours = next(i for i in items if i["id"] == "majortom_val_0000001")  # with 0000002 beside it
    x, y = _tile_at(neighbours, 13)
    live = _live(live_server, 13, x, y)
    agree, diff = _close(_rgba(_seeded(live_server, 13, x, y).content), live)
    assert agree > 0.99 and diff < 4, (agree, diff)  # the same pixels, WebP-encoded
    # zoom 12 is its four children averaged: close to what the live mosaic draws at zoom 12
    x12, y12 = _tile_at(neighbours, 12)
    children = {}
    for dx in (0, 1):
        for dy in (0, 1):
            child = _live(live_server, 13, 2 * x12 + dx, 2 * y12 + dy)
            if child is not None:
                children[(dx, dy)] = child.astype(np.uint8)
    seeded12 = _rgba(_seeded(live_server, 12, x12, y12).content)
    agree, diff = _close(seeded12, mosaic_cache.parent_of(children).astype(np.int16))
    assert agree > 0.99 and diff < 4, (agree, diff)
    agree, diff = _close(seeded12, _live(live_server, 12, x12, y12))
    assert agree > 0.97 and diff < 40, (agree, diff)  # another resampling of the same pixels


def test_empty_unseeded_and_bad_tiles(seeded, live_server):
    empty = _seeded(live_server, 12, 0, 0)  # the Arctic Ocean: no sample there
    assert empty.status_code == 204 and empty.headers["cache-control"] == SHORT_TTL  # no v: short
    for z, x, y, render, status in (
        (14, 0, 0, RENDER, 404),  # not seeded at zoom 14
        (12, 0, 0, "dem", 404),  # a preset not seeded
        (20, 0, 0, RENDER, 404),  # beyond the seeded zooms of any seeding
        (12, 4096, 0, RENDER, 404),  # outside the zoom-12 grid
        (12, 0, 0, "r" * 65, 400),
    ):
        r = httpx.get(
            f"{live_server}/vector/mosaic/{render}/{z}/{x}/{y}.webp", params={"collection": API_COLLECTION_ID}
        )
        assert r.status_code == status, (z, x, y, render, r.text)
        assert r.json()["detail"] and "Traceback" not in r.text
    r = httpx.get(f"{live_server}/vector/mosaic/{RENDER}/12/0/0.webp", params={"collection": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_bad_render_or_zooms_are_refused_before_any_work(pgstac_db, api_catalog):
    proc = _cli(pgstac_db, "mosaic", "--collection", API_COLLECTION_ID, "--render", "nope")
    assert proc.returncode == EXIT_USAGE, proc.stdout + proc.stderr
    assert "has no render 'nope'" in proc.stderr and RENDER in proc.stderr
    proc = _cli(pgstac_db, "mosaic", "--collection", API_COLLECTION_ID, "--zooms", "12-11")
    assert proc.returncode == EXIT_USAGE and "MIN <= MAX" in proc.stderr
    proc = _cli(pgstac_db, "mosaic", "--collection", "nope")
    assert proc.returncode == EXIT_USAGE and "'nope' not found" in proc.stderr


def test_a_load_retires_the_seeding_until_the_next(seeded, pgstac_db, live_server, api_catalog):
    _, _, items = api_catalog
    x, y = _tile_at(items[0], 12)
    before = _revision(live_server)
    assert before["seeded_mosaic"]
    proc = _cli(pgstac_db, "density", "--collection", API_COLLECTION_ID)  # what a load ends with
    assert proc.returncode == 0, proc.stderr
    after = _revision(live_server)
    assert after["revision"] == before["revision"] + 1 and after["seeded_mosaic"] == {}  # the map stops using it
    stale = _seeded(live_server, 12, x, y, v=after["revision"])
    assert stale.status_code == 200 and stale.headers["cache-control"] == SHORT_TTL  # never immutable now
    assert stale.headers["x-seeded-revision"] == str(before["revision"])
    proc = _seed(pgstac_db)
    assert proc.returncode == 0, proc.stderr
    again = _revision(live_server)
    assert again["seeded_mosaic"] == {RENDER: {"minzoom": 11, "maxzoom": 13}}
    assert _seeded(live_server, 12, x, y, v=again["revision"]).headers["cache-control"] == IMMUTABLE


def test_a_tile_the_service_fails_on_is_reported_and_the_rest_seeded(seeded, pgstac_db, live_server, api_catalog):
    _, _, items = api_catalog
    alone = next(i for i in items if i["id"] == "majortom_train_0000003")
    cog = Path(alone["assets"]["S2L2A"]["href"])
    backup = cog.with_suffix(".bak")
    shutil.copy(cog, backup)
    try:
        cog.write_bytes(cog.read_bytes()[:2000])  # truncated
        proc = _seed(pgstac_db)
        assert proc.returncode == EXIT_PARTIAL, proc.stdout + proc.stderr
        x, y = _tile_at(alone, 13)
        failed = [line.split("failed: ", 1)[1] for line in proc.stdout.splitlines() if "failed: " in line]
        assert any(f.startswith(f"13/{x}/{y} (items {alone['id']}): ") for f in failed), proc.stdout
        w, s, e, n = alone["bbox"]
        for line in failed:  # only the tiles of the broken sample, each with the reason
            z, tx, ty = map(int, line.split(" ")[0].split("/"))
            assert alone["id"] in line.split(":")[0], line  # the broken sample is named
            b = WEB_MERCATOR.bounds(morecantile.Tile(tx, ty, z))
            assert b.left <= e and w <= b.right and b.bottom <= n and s <= b.top, line
            assert "S2L2A" in line or "read" in line.lower(), line
        assert "Traceback" not in proc.stdout + proc.stderr and "/tmp/" not in proc.stdout
        others = [i for i in items if i["id"] != alone["id"]]
        info = _revision(live_server)
        for item in others:  # the rest is seeded
            assert _seeded(live_server, 13, *_tile_at(item, 13), v=info["revision"]).status_code == 200
    finally:
        shutil.move(backup, cog)
    assert _seed(pgstac_db).returncode == 0


def test_a_parent_tile_averages_its_children_by_alpha():
    opaque = np.zeros((256, 256, 4), np.uint8)
    opaque[...] = (100, 150, 200, 255)
    half = np.zeros((256, 256, 4), np.uint8)
    half[::2, ::2] = (40, 40, 40, 255)  # one opaque pixel in each 2x2 block, the rest transparent
    parent = mosaic_cache.parent_of({(0, 0): opaque, (1, 1): half})
    assert (parent[:128, :128] == (100, 150, 200, 255)).all()
    assert (parent[128:, 128:, :3] == 40).all()  # transparent neighbours do not darken it
    assert (parent[128:, 128:, 3] == 64).all()
    assert (parent[:128, 128:, 3] == 0).all() and (parent[128:, :128, 3] == 0).all()  # no child there
