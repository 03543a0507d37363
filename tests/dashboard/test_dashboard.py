"""The dashboard at /ui in a real headless Chromium (Debian's chromium and chromedriver, which
scripts/test-deps.sh installs) against a real 3-node cluster: an instance registered by another
process appears, and goes when that process is killed and its lease expires; members, the key
browser and config history show what the cluster holds. With RAFTREG_SCREENSHOTS=<dir> the test
saves the screenshots docs/dashboard.md shows."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from raftreg.client import GrpcRegistryClient
from raftreg.testing import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# A page reacts to a change through its watch within a second; the periodic re-read (5 s) and a
# loaded machine are what this bound allows for.
SEEN_S = 20.0
TTL = 2

REGISTER = """
import asyncio, sys
from raftreg.client import GrpcRegistryClient
from raftreg.discovery import Instance, Registration

async def main() -> None:
    async with GrpcRegistryClient(sys.argv[1].split(",")) as client:
        instance = Instance("orders", "", "10.1.2.3:9000", zone="eu-1", version="2.1.0")
        async with Registration(client, instance, ttl=int(sys.argv[2])):
            print("registered", flush=True)
            await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: scripts/test-deps.sh installs it")
        pytest.skip("chromium and chromedriver are missing (scripts/test-deps.sh installs them)")
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-sync",
                "--disable-component-update", "--disable-dev-shm-usage",
                "--window-size=1280,720", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def shoot(driver: WebDriver, name: str) -> None:
    out = os.environ.get("RAFTREG_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(out) / f"dashboard-{name}.png"))


def texts(driver: WebDriver, selector: str) -> list[str]:
    """The text of each element matching `selector`, read in one step inside the page (the
    page replaces its rows on every refresh: elements found one call earlier may be gone)."""
    found: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]),"
        " e => e.innerText.replace(/\\s+/g, ' ').trim())", selector)
    return found


def rows(driver: WebDriver, section: str) -> list[str]:
    return texts(driver, f"#{section} tbody tr")


def until(driver: WebDriver, what: str, check: object) -> None:
    try:
        WebDriverWait(driver, SEEN_S, poll_frequency=0.1).until(check)  # type: ignore[arg-type]
    except TimeoutException:
        error = driver.find_element(By.ID, "error")
        raise AssertionError(f"not within {SEEN_S}s: {what}; page error: {error.text!r}; "
                             f"console: {driver.get_log('browser')}") from None


def instance_row(driver: WebDriver) -> list[str]:
    return [r for r in rows(driver, "services") if r.startswith("orders 10.1.2.3:9000")]


async def seed_config(c: ProcessCluster) -> None:
    async with GrpcRegistryClient(c.endpoints) as client:
        await client.put("/config/orders/db.pool", "10")
        await client.put("/config/orders/db.pool", "12")
        await client.put("/config/orders/feature.checkout", "true")


def test_dashboard_follows_the_cluster_in_a_browser(
    tmp_path: Path, browser: WebDriver
) -> None:
    with ProcessCluster(tmp_path / "c") as c:
        c.start()
        leader = c.wait_leader()
        asyncio.run(seed_config(c))
        browser.get(f"http://{c.http['n2']}/ui/")
        until(browser, "the watch connected",
              lambda d: d.find_element(By.ID, "live").text == "live")
        assert instance_row(browser) == []

        proc = subprocess.Popen([sys.executable, "-c", REGISTER, ",".join(c.endpoints),
                                 str(TTL)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "registered\n"
            until(browser, "the registered instance appears", lambda d: instance_row(d))
            cells = instance_row(browser)[0].split()
            assert cells[2:6] == ["10.1.2.3:9000", "1", "eu-1", "2.1.0"], cells
            assert f"of {TTL}s" in instance_row(browser)[0]
            shoot(browser, "services")
        finally:
            proc.kill()  # no deregistration: the lease has to expire
            proc.wait(10)
        t0 = time.monotonic()
        until(browser, "the killed instance goes", lambda d: not instance_row(d))
        assert time.monotonic() - t0 >= 0.5  # it went by lease expiry, not at once

        browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=cluster]").click()
        until(browser, "three healthy members, one leader", lambda d: len(
            [r for r in rows(d, "cluster") if "healthy" in r and "unhealthy" not in r]) == 3)
        leaders = [r for r in rows(browser, "cluster") if " leader " in f" {r} "]
        assert len(leaders) == 1 and leaders[0].startswith(leader), rows(browser, "cluster")
        shoot(browser, "members")

        browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=keys]").click()
        browser.find_element(By.ID, "prefix").send_keys("/config/orders/")
        browser.find_element(By.CSS_SELECTOR, "#keys-form button").click()
        until(browser, "the config keys listed", lambda d: len(rows(d, "keys")) == 2)
        assert rows(browser, "keys")[0].startswith("/config/orders/db.pool 12")
        shoot(browser, "keys")

        browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=config]").click()
        until(browser, "the settings shown",
              lambda d: texts(d, "#config-list tr[data-setting='orders/db.pool']"))
        # the page rebuilds this button on each refresh: click it inside the page, in one step
        browser.execute_script("document.querySelector('#config-list h2 button').click()")
        until(browser, "the history shown", lambda d: len(texts(d, "#history tbody tr")) == 3)
        history = texts(browser, "#history tbody tr")
        assert "db.pool = 12" in history[1] and "db.pool = 10" in history[2], history
        # live: a change made now shows without any click
        asyncio.run(put(c, "/config/orders/db.pool", "16"))
        until(browser, "the new version shown",
              lambda d: len(texts(d, "#history tbody tr")) == 4)
        shoot(browser, "config")


async def put(c: ProcessCluster, key: str, value: str) -> None:
    async with GrpcRegistryClient(c.endpoints) as client:
        await client.put(key, value)


def test_events_stream_reports_every_change(tmp_path: Path) -> None:
    """What keeps a page live, without a browser: one `data:` line per change, in order."""
    with ProcessCluster(tmp_path / "c", size=1) as c:
        c.start()
        c.wait_leader()
        with urllib.request.urlopen(f"http://{c.http['n1']}/ui/api/events", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            assert r.readline() == b": watching\n"  # the watch exists from here on
            asyncio.run(put(c, "a", "1"))
            asyncio.run(put(c, "b", "2"))
            seen = []
            while len(seen) < 2:
                line = r.readline()
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[6:])["revision"])
            assert seen[1] == seen[0] + 1, seen
