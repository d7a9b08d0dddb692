"""The status page (`GET /` on the daemon's [http] listener) in a real browser: Debian's chromium,
headless, driven by Selenium through chromium-driver, loads the page of a daemon whose state dir
holds real runs (a failed one, a full, an incremental, a restore drill). Checks what a person
reads there, that no console error (CSP included) appears, that it fits a phone, and that both
colour schemes apply. Screenshots go to tmp_path; with BACKUPD_SCREENSHOTS=1 into docs/images/
(the ones docs/operations.md and the README show)."""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, run_cli, wait_for
from tests.e2e.test_daemon import DaemonProcess, free_port, http_get

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="chromium and chromium-driver not installed (scripts/ensure-tools.sh)")
EVIL_DB = 'nope<script>alert("x")</script>'


def _browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def _screenshot(driver: Any, width: int, path: Path) -> None:
    """A full-page PNG at `width` CSS pixels."""
    driver.set_window_size(width, 900)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))


@pytest.mark.slow
def test_status_page_in_headless_chromium(make_config, pg, source_dsn, tmp_path):
    """A daemon that made real backups serves a page with health and reason, next run, the runs
    (id, kind, outcome, duration, size, rows, per destination), the drill and its RTO, each
    destination's newest backup and retention, two SVG charts; hostile text stays text; no
    console error; no horizontal scroll at phone width; dark and light schemes."""
    port = free_port()
    destinations = [
        {"name": "local", "type": "local", "path": str(tmp_path / "backups"), "retention": {"keep_days": 30}},
        {"name": "offsite", "type": "local", "path": str(tmp_path / "offsite"),
         "retention": {"keep_daily": 7, "keep_weekly": 4}},
    ]
    config = make_config(source={"dsn": pg.dsn(EVIL_DB)}, destinations=destinations,
                         export={"incremental": True}, schedule={"at": ["03:00"], "catch_up": False},
                         http={"listen": f"127.0.0.1:{port}"})
    assert run_cli("--config", str(config), "-q", "backup").returncode == 1   # the database does not exist
    config = make_config(destinations=destinations, export={"incremental": True},
                         schedule={"at": ["03:00"], "catch_up": False}, http={"listen": f"127.0.0.1:{port}"})
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    pg.execute(source_dsn, "UPDATE tasks SET title = title || '!' WHERE id IN (SELECT id FROM tasks LIMIT 50)")
    assert run_cli("--config", str(config), "-q", "backup").returncode == 0
    drill = run_cli("--config", str(config), "-q", "verify", "latest", "--restore-test")
    assert drill.returncode == 0, drill.stderr

    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    driver = None
    try:
        wait_for(lambda: _listening(port), 30, "the daemon's HTTP listener")
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as reply:
            headers = reply.headers
            html = reply.read().decode()
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            json_headers = reply.headers
        for name in ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy",
                     "Cache-Control"):
            assert headers[name] and headers[name] == json_headers[name], name
        assert "<script" not in html and "&lt;script&gt;" in html
        # the page goes through the listener's Host check like every other route
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/", headers={"Host": "rebound.example:80"})
        refused = connection.getresponse()
        assert refused.status == 421 and b"backupd" not in refused.read()
        connection.close()

        driver = _browser()
        driver.get(f"http://127.0.0.1:{port}/")
        from selenium.webdriver.common.by import By

        assert driver.find_element(By.ID, "health").text == "healthy"
        assert "The last successful backup" in driver.find_element(By.ID, "reason").text
        summary = driver.find_element(By.ID, "summary").text
        assert "Next run" in summary and "UTC (in " in summary and "Last drill RTO" in summary
        runs = [row.text for row in driver.find_elements(By.CSS_SELECTOR, "#runs tbody tr")]
        assert len(runs) == 3
        assert "incremental" in runs[0] and "success" in runs[0] and "local: stored" in runs[0] \
            and "offsite: stored" in runs[0]
        assert "full" in runs[1] and "success" in runs[1]
        assert "failed" in runs[2] and EVIL_DB in runs[2]        # shown as text, not run
        assert driver.find_elements(By.TAG_NAME, "script") == []
        assert "restore drill" in driver.find_element(By.ID, "drill").text \
            and "RTO" in driver.find_element(By.ID, "drill").text
        table = {row.find_elements(By.TAG_NAME, "td")[0].text: row.text
                 for row in driver.find_elements(By.CSS_SELECTOR, "#destinations tbody tr")}
        newest = runs[0].split()[0]
        assert newest in table["local"] and "keep days 30" in table["local"] and "passed" in table["local"]
        assert newest in table["offsite"] and "keep daily 7, keep weekly 4" in table["offsite"]
        bars = {chart: len(driver.find_elements(By.CSS_SELECTOR, f"#chart-{chart} svg rect"))
                for chart in ("duration", "size")}
        assert bars == {"duration": 3, "size": 3}
        light = driver.execute_script("return getComputedStyle(document.body).backgroundColor")

        out = REPO / "docs" / "images" if os.environ.get("BACKUPD_SCREENSHOTS") == "1" else tmp_path
        out.mkdir(parents=True, exist_ok=True)
        _screenshot(driver, 1280, out / "status-page-desktop.png")
        driver.set_window_size(390, 844)
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia",
                               {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        dark = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
        assert light != dark, (light, dark)
        _screenshot(driver, 390, out / "status-page-phone.png")
        for name in ("status-page-desktop.png", "status-page-phone.png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
        assert errors == [], errors
    finally:
        if driver is not None:
            driver.quit()
        daemon.stop()
    assert "Traceback" not in daemon.log


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
