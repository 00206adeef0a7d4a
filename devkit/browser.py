"""Headless Chromium (Debian's chromium and chromium-driver) driven by Selenium.

scripts/setup.sh installs both; Selenium is pointed at them, so nothing is downloaded (the
caller sets SE_OFFLINE=true, which also keeps Selenium Manager from trying).
"""

from __future__ import annotations

from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def installed() -> bool:
    """Whether Chromium and its driver are there."""
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def headless(profile: Path, width: int, height: int) -> WebDriver:
    """A headless Chromium with its profile in `profile` and a window of width x height."""
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
