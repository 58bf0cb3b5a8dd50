"""Debian's Chromium, headless, driven by Selenium through Debian's chromedriver (nothing
downloaded). Selenium blocks, so a test on the event loop calls it through
:func:`asyncio.to_thread` while the relay it talks to keeps running on the loop."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.conftest import require

#: Chromium on a closed network: no sync, no component updates, no background calls
#: (each would be refused, many times over), no first-run screens
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--window-size=412,915",  # a phone
)


def find_chromium() -> tuple[str | None, str | None]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return browser, driver


@contextlib.contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    browser, driver = find_chromium()
    require(
        "Chromium and chromedriver",
        browser is not None and driver is not None,
        "sudo apt-get install chromium chromium-driver",
    )
    assert browser is not None and driver is not None
    profile = Path(tempfile.mkdtemp(prefix="sos-chromium-"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    try:
        drv.set_page_load_timeout(30)
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)
