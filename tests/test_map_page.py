"""The map page in a real browser: Debian's headless Chromium over WebDriver (tests/browser.py),
on generated TerraMesh shards converted, loaded and served by the CLI as a user runs them.

Checked in the screenshot's pixels, not only in the network log: the density layer is drawn
where the samples are and follows the filters; a click on a footprint opens the sample's
panel; a modality chosen there draws its pixels at the sample.
"""

from __future__ import annotations

import math

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.browser import (
    chromium,
    click_at,
    console_errors,
    foreign_requests,
    requested_urls,
    screen_point,
    screenshot,
    set_layer_visible,
    wait_for,
    wait_for_map,
)
from tests.conftest import cluster_env, serve_with_cli
from tests.test_end_to_end import convert_and_load, run_cli

COLLECTION = "terramesh-map"


@pytest.fixture(scope="module")
def served_map(synth_root, tmp_path_factory, pgstac_db):
    """Generated shards -> `convert` -> `load` (which recounts the density) -> `serve`."""
    dest = tmp_path_factory.mktemp("map") / "out"
    items = convert_and_load(synth_root, dest, COLLECTION, pgstac_db.loader)
    with serve_with_cli(pgstac_db, dest, TERRAMESH_COLLECTION_ID=COLLECTION) as base:
        yield base, items


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def _centre(item) -> tuple[float, float]:
    w, s, e, n = item["bbox"]
    if w > e:  # across the antimeridian
        e += 360
    lon = (w + e) / 2
    return (lon - 360 if lon > 180 else lon), (s + n) / 2


def _pixel(image, point) -> tuple[int, int, int]:
    return image.getpixel(point)


def _differs(a, b, by: int = 30) -> bool:
    return sum(abs(x - y) for x, y in zip(a, b)) > by


def _on_canvas(driver, point) -> bool:
    width, height = driver.execute_script(
        "const r = window.terrameshMap.getCanvas().getBoundingClientRect(); return [r.right, r.bottom];"
    )
    left = driver.execute_script("return window.terrameshMap.getCanvas().getBoundingClientRect().left")
    return left + 30 < point[0] < width - 30 and 30 < point[1] < height - 30


def _km(a, b) -> float:
    (lon1, lat1), (lon2, lat2) = a, b
    dlon = math.radians(((lon2 - lon1 + 180) % 360) - 180)
    x = dlon * math.cos(math.radians((lat1 + lat2) / 2))
    return 6371 * math.hypot(x, math.radians(lat2 - lat1))


def test_page_and_its_built_files_are_served(served_map):
    base, _ = served_map
    for path in ("/", "/map"):
        r = httpx.get(base + path, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "%ROOT%" not in r.text and 'src="/map/map.js"' in r.text
    config = httpx.get(f"{base}/map/config.json", timeout=30).json()
    assert config["collection"] == COLLECTION
    assert (config["stac"], config["raster"], config["vector"]) == ("/stac", "/raster", "/vector")
    for path, media_type in (("/map/map.js", "text/javascript"), ("/map/maplibre-gl-worker.mjs", "text/javascript")):
        r = httpx.get(base + path, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith(media_type)
    land = httpx.get(f"{base}/map/basemap/land.geojson", timeout=30).json()
    assert land["type"] in ("Feature", "FeatureCollection")
    assert httpx.get(f"{base}/map/nothing.js", timeout=30).status_code == 404


def test_world_view_draws_density_where_the_samples_are(served_map, browser):
    base, items = served_map
    browser.get(f"{base}/")
    wait_for_map(browser)
    assert console_errors(browser) == []
    assert foreign_requests(requested_urls(browser), base) == []  # offline: only this service
    with_density = screenshot(browser)
    # (a sample on the antimeridian is counted at one of its sides: not checked here)
    centres = [c for c in map(_centre, items.values()) if abs(c[0]) < 179]
    points = [p for p in (screen_point(browser, *c) for c in centres) if _on_canvas(browser, p)]
    assert len(points) >= len(items) // 2
    set_layer_visible(browser, "density", False)
    wait_for_map(browser)
    without = screenshot(browser)
    set_layer_visible(browser, "density", True)
    for point in points:
        drawn, base_map = _pixel(with_density, point), _pixel(without, point)
        assert _differs(drawn, base_map), (point, drawn, base_map)
        assert drawn[0] > drawn[2] + 60  # the density colours are warm: red over blue
    # and nothing drawn far from every sample: a corner of the map shows the base map alone
    corner = (browser.execute_script("return window.terrameshMap.getCanvas().getBoundingClientRect().left") + 20, 700)
    assert not _differs(_pixel(with_density, corner), _pixel(without, corner), 6)


def test_density_follows_the_source_filter_and_the_url_keeps_it(served_map, browser):
    base, items = served_map
    browser.get(f"{base}/")
    wait_for_map(browser)
    before = screenshot(browser)
    Select(browser.find_element(By.NAME, "source")).select_by_value("ssl4eos12")
    wait_for(browser, "return window.location.search.includes('source=ssl4eos12')", 20)
    wait_for_map(browser)
    after = screenshot(browser)
    ssl = [_centre(i) for i in items.values() if i["properties"]["terramesh:source"] == "ssl4eos12"]
    ssl = [c for c in ssl if abs(c[0]) < 179]
    alone = [  # majortom samples with no ssl4eos12 sample within 500 km (not in a shared cell)
        _centre(i)
        for i in items.values()
        if i["properties"]["terramesh:source"] == "majortom"
        and min(_km(_centre(i), c) for c in ssl) > 500
        and abs(_centre(i)[0]) < 179
    ]
    assert alone and ssl
    for lonlat in alone:
        point = screen_point(browser, *lonlat)
        if _on_canvas(browser, point):
            assert _differs(_pixel(before, point), _pixel(after, point)), lonlat  # its cell is gone
    for lonlat in ssl:
        point = screen_point(browser, *lonlat)
        if _on_canvas(browser, point):
            assert not _differs(_pixel(before, point), _pixel(after, point), 6), lonlat
    # reload: the filter comes back from the URL
    browser.refresh()
    wait_for_map(browser)
    assert Select(browser.find_element(By.NAME, "source")).first_selected_option.get_attribute("value") == "ssl4eos12"
    reloaded = screenshot(browser)
    for lonlat in alone:
        point = screen_point(browser, *lonlat)
        if _on_canvas(browser, point):
            assert not _differs(_pixel(after, point), _pixel(reloaded, point), 6)


def test_click_a_footprint_then_a_modality_draws_its_pixels(served_map, browser):
    base, items = served_map
    item = next(i for i in items.values() if i["properties"]["terramesh:source"] == "majortom")
    lon, lat = _centre(item)
    browser.get(f"{base}/#13/{lat:.5f}/{lon:.5f}")
    wait_for_map(browser)
    assert console_errors(browser) == []
    click_at(browser, lon, lat)
    wait_for(browser, "return !document.getElementById('panel').hidden", 30, "the sample panel")
    assert browser.find_element(By.CSS_SELECTOR, "#panel-body h2").text == item["id"]
    grd = browser.find_element(By.CSS_SELECTOR, "button[data-preset='sar-grd']")
    assert not grd.is_enabled() and "no S1GRD" in grd.text  # a Major TOM sample has S1RTC, not S1GRD
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#panel-body a")]
    assert any(h.endswith(f"/items/{item['id']}") for h in links)
    assert any("DEM" in h for h in links)

    x, y = screen_point(browser, lon, lat)
    box = [(x + dx, y + dy) for dx in range(-40, 41, 10) for dy in range(-40, 41, 10)]
    before = screenshot(browser)
    browser.find_element(By.CSS_SELECTOR, "button[data-preset='dem']").click()
    wait_for(browser, "return !!window.terrameshMap.getSource('sample')", 30, "the DEM layer")
    wait_for_map(browser)
    after = screenshot(browser)
    changed = sum(_differs(before.getpixel(p), after.getpixel(p)) for p in box)
    assert changed >= len(box) * 0.7, changed  # the DEM's colours drawn over the sample
    legend = browser.find_element(By.ID, "sample-legend").text
    assert "Copernicus DEM" in legend and " m" in legend
    assert browser.find_elements(By.CSS_SELECTOR, "#sample-legend .colorbar")
    assert "layer=dem" in browser.current_url and f"item={item['id']}" in browser.current_url
    # the item's tiles carry the catalog revision (cached as immutable until the next load)
    assert any(f"/items/{item['id']}/tiles/" in u and "v=" in u for u in requested_urls(browser))
    assert console_errors(browser) == []

    # the URL is the view: reloading it opens the same sample with the same layer
    browser.get(browser.current_url)
    wait_for_map(browser)
    wait_for(browser, "return !document.getElementById('panel').hidden", 30, "the sample panel after reload")
    assert browser.find_element(By.CSS_SELECTOR, "#panel-body h2").text == item["id"]
    pressed = browser.find_element(By.CSS_SELECTOR, "button[data-preset='dem']").get_attribute("aria-pressed")
    assert pressed == "true"
    again = screenshot(browser)
    assert sum(not _differs(after.getpixel(p), again.getpixel(p), 12) for p in box) >= len(box) * 0.9


def test_land_cover_legend_lists_the_classes_with_their_colours(served_map, browser):
    base, items = served_map
    item = next(iter(items.values()))
    lon, lat = _centre(item)
    browser.get(f"{base}/?item={item['id']}&layer=lulc#13/{lat:.5f}/{lon:.5f}")
    wait_for_map(browser)
    wait_for(browser, "return document.querySelectorAll('#sample-legend .legend-row').length > 3", 30, "classes")
    rows = browser.find_elements(By.CSS_SELECTOR, "#sample-legend .legend-row")
    texts = [r.text for r in rows]
    assert any("Tree" in t or "tree" in t for t in texts), texts
    colours = {r.find_element(By.CSS_SELECTOR, ".swatch").value_of_css_property("background-color") for r in rows}
    assert len(colours) == len(rows)  # one colour per class


def test_zoom_11_draws_the_seeded_mosaic_unless_a_filter_is_set(served_map, browser, pgstac_db):
    base, items = served_map
    seeded = run_cli(
        "db", "mosaic", "--collection", COLLECTION, env=cluster_env(pgstac_db)
    )  # the default render, zooms 11-13
    assert "0 failed" in seeded.stdout, seeded.stdout
    item = next(i for i in items.values() if "S2L2A" in i["assets"] and abs(_centre(i)[0]) < 170)
    lon, lat = _centre(item)
    browser.get(f"{base}/#10.4/{lat:.5f}/{lon:.5f}")  # MapLibre draws 256 px tiles of zoom 11 here
    wait_for_map(browser)
    wait_for(browser, "return !!window.terrameshMap.getLayer('seeded')", 30, "the seeded mosaic layer")
    assert console_errors(browser) == []
    urls = requested_urls(browser)  # (the log is read once: reading empties it)
    assert foreign_requests(urls, base) == []
    mosaic_urls = [u for u in urls if "/vector/mosaic/" in u]
    assert any("/vector/mosaic/true-color/11/" in u and "v=" in u for u in mosaic_urls), mosaic_urls
    x, y = screen_point(browser, lon, lat)
    box = [(x + dx, y + dy) for dx in range(-9, 10, 3) for dy in range(-9, 10, 3)]
    with_mosaic = screenshot(browser)
    set_layer_visible(browser, "seeded", False)
    wait_for_map(browser)
    without = screenshot(browser)
    set_layer_visible(browser, "seeded", True)
    changed = sum(_differs(with_mosaic.getpixel(p), without.getpixel(p)) for p in box)
    assert changed >= len(box) * 0.7, changed  # the sample's pixels drawn at zoom 11
    assert "made ahead" in browser.find_element(By.ID, "legend").text

    # a filter: the seeded mosaic (of the whole collection) is not drawn, footprints are
    Select(browser.find_element(By.NAME, "source")).select_by_value(item["properties"]["terramesh:source"])
    wait_for(browser, "return window.location.search.includes('source=')", 20)
    wait_for_map(browser)
    assert browser.execute_script("return window.terrameshMap.getLayer('seeded') === undefined")
    filtered = screenshot(browser)
    assert sum(_differs(with_mosaic.getpixel(p), filtered.getpixel(p)) for p in box) >= len(box) * 0.5
