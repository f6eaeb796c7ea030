"""Headless Chromium from the distribution (chromium + chromium-driver), driven over WebDriver
(selenium), for the map page's tests and benchmarks/map_screenshots.py.

Chromium starts with a fresh profile, no background networking (this machine has no
internet, and the page must not need it) and SwiftShader's software WebGL, which MapLibre
renders with when there is no GPU.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from io import BytesIO
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 860)


@contextmanager
def chromium(window=WINDOW):
    """A WebDriver session of headless Chromium; yields the driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        raise RuntimeError("Debian's chromium and chromium-driver are needed: run infra/install.sh")
    profile = tempfile.mkdtemp(prefix="terramesh-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root (CI)
        "--disable-gpu",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--window-size={window[0]},{window[1]}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, script: str, timeout: float = 60.0, what: str = ""):
    """Run `script` (a JavaScript expression's `return ...`) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or script} not true after {timeout} s; console: {console_errors(driver)}")
        time.sleep(0.2)


def wait_for_map(driver, timeout: float = 90.0) -> None:
    """Until the page says it is ready and MapLibre has drawn every tile it asked for."""
    wait_for(driver, "return document.body.dataset.ready === 'true'", timeout, "map page ready")
    wait_for(
        driver,
        "const m = window.terrameshMap; return m && m.loaded() && m.areTilesLoaded() && !m.isMoving();",
        timeout,
        "map tiles loaded",
    )
    time.sleep(0.5)  # the last frame drawn


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def requested_urls(driver) -> list[str]:
    """Every URL the page requested so far (from the DevTools performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def foreign_requests(urls: list[str], base: str) -> list[str]:
    """The URLs that go to another host than `base`'s (data: and blob: URLs are local)."""
    host = urlsplit(base).netloc
    return [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).netloc != host]


def screenshot(driver):
    """The page as a PIL RGB image."""
    from PIL import Image

    return Image.open(BytesIO(driver.get_screenshot_as_png())).convert("RGB")


def screen_point(driver, lon: float, lat: float) -> tuple[int, int]:
    """Where (lon, lat) is drawn, in screenshot pixels."""
    x, y = driver.execute_script(
        """const m = window.terrameshMap; const p = m.project([arguments[0], arguments[1]]);
        const r = m.getCanvas().getBoundingClientRect(); return [p.x + r.left, p.y + r.top];""",
        lon,
        lat,
    )
    ratio = driver.execute_script("return window.devicePixelRatio") or 1
    return round(x * ratio), round(y * ratio)


def click_at(driver, lon: float, lat: float) -> None:
    """A real mouse click (WebDriver actions) where (lon, lat) is drawn on the map."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.CSS_SELECTOR, "#map canvas")
    dx, dy = driver.execute_script(
        """const m = window.terrameshMap; const p = m.project([arguments[0], arguments[1]]);
        const r = m.getCanvas().getBoundingClientRect(); return [p.x - r.width / 2, p.y - r.height / 2];""",
        lon,
        lat,
    )
    ActionChains(driver).move_to_element_with_offset(canvas, round(dx), round(dy)).click().perform()


def set_layer_visible(driver, layer: str, visible: bool) -> None:
    driver.execute_script(
        "window.terrameshMap.setLayoutProperty(arguments[0], 'visibility', arguments[1] ? 'visible' : 'none');",
        layer,
        visible,
    )
