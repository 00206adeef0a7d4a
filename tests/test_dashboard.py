"""The dashboard in a real browser: Debian's Chromium, headless, driven by Selenium.

scripts/setup.sh installs `chromium` and `chromium-driver`; Selenium is pointed at them, so
nothing is downloaded (SE_OFFLINE also keeps Selenium Manager from trying). The browser and
the server process are devkit's, shared with scripts/dashboard_screenshot.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devkit import browser as chromium
from devkit.server import Process, serve

pytestmark = pytest.mark.slow
TOKEN = "dashboard-token"
WAIT = 20.0  # seconds: only turns a hang into a failure

if not chromium.installed():
    pytest.skip(
        "Chromium is missing: scripts/setup.sh installs it (apt-get install chromium "
        "chromium-driver)",
        allow_module_level=True,
    )

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def config_text() -> str:
    lines = [
        "server: {memory_budget: 100MB, watch: false, capacity_wait: 1}",
        "models:",
        "  big: {loader: fake, options: {size: 60MB, load_seconds: 0.2}}",
        "  other: {loader: fake, device: auto, options: {size: 60MB}}",
    ]
    lines += [f"  m{i:03d}: {{loader: fake, options: {{size: 100kB}}}}" for i in range(98)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Process]:
    config = tmp_path / "models.yaml"
    config.write_text(config_text())
    with serve(config, env={**os.environ, "MODEL_REGISTRY_ADMIN_TOKEN": TOKEN}) as process:
        process.wait_live(30.0)
        yield process
        assert process.stop() == 0, process.log


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    monkeypatch.setenv("SE_OFFLINE", "true")
    driver = chromium.headless(tmp_path / "chromium-profile", 1400, 900)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, css: str) -> None:
    WebDriverWait(driver, WAIT).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def gone(driver: WebDriver, css: str) -> None:
    WebDriverWait(driver, WAIT).until(lambda d: not d.find_elements(By.CSS_SELECTOR, css))


def open_dashboard(driver: WebDriver, server: Process) -> None:
    driver.get(server.url + "/")  # redirects to /dashboard
    wait_for(driver, '#connection[data-state="live"]')
    wait_for(driver, 'tr[data-model="m097"]')
    assert len(driver.find_elements(By.CSS_SELECTOR, "#model-rows tr")) == 100


def test_a_load_through_the_api_shows_on_the_page(server: Process, browser) -> None:
    open_dashboard(browser, server)
    wait_for(browser, 'tr[data-model="big"][data-state="unloaded"]')
    assert not browser.find_elements(By.CSS_SELECTOR, '#memory-bar [data-model="big"]')

    response = httpx.post(
        f"{server.url}/models/big/load", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert response.status_code == 200, response.text

    wait_for(browser, 'tr[data-model="big"][data-state="loaded"]')
    wait_for(browser, '#memory-bar [data-model="big"][data-state="loaded"]')
    segment = browser.find_element(By.CSS_SELECTOR, '#memory-bar [data-model="big"]')
    assert segment.get_attribute("data-bytes") == "60000000"
    bar = browser.find_element(By.ID, "memory-bar")
    assert segment.size["width"] == pytest.approx(0.6 * bar.size["width"], abs=3)
    wait_for(browser, '#events li[data-type="loaded"][data-model="big"]')
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-model="big"]')
    assert "60.0 MB" in row.text
    assert device_cell(browser, "big") == "cpu"


def device_cell(driver: WebDriver, model: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, f'tr[data-model="{model}"] td.c-device').text)


def test_the_device_column_shows_where_auto_went(server: Process, browser) -> None:
    """Each row shows the device its model runs on: the entry's `auto` before the first load,
    then where it went ("auto->cpu": the fake holds plain bytes in RAM), with both in the
    cell's title."""
    open_dashboard(browser, server)
    wait_for(browser, 'tr[data-model="other"][data-state="unloaded"]')
    assert device_cell(browser, "other") == "auto"
    response = httpx.post(
        f"{server.url}/models/other/load", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    wait_for(browser, 'tr[data-model="other"][data-state="loaded"][data-device="cpu"]')
    assert device_cell(browser, "other") == "auto->cpu"
    cell = browser.find_element(By.CSS_SELECTOR, 'tr[data-model="other"] td.c-device')
    assert cell.get_attribute("title") == "models.yaml: auto; last load ran on cpu"


def test_admin_buttons_ask_for_the_token_and_act(server: Process, browser) -> None:
    httpx.post(f"{server.url}/models/big/load", headers={"Authorization": f"Bearer {TOKEN}"})
    open_dashboard(browser, server)
    wait_for(browser, 'tr[data-model="big"][data-state="loaded"]')

    browser.find_element(
        By.CSS_SELECTOR, 'tr[data-model="other"] button[data-action="load"]'
    ).click()
    alert = WebDriverWait(browser, WAIT).until(expected_conditions.alert_is_present())
    alert.send_keys(TOKEN)
    alert.accept()

    wait_for(browser, 'tr[data-model="other"][data-state="loaded"]')
    wait_for(browser, 'tr[data-model="big"][data-state="unloaded"]')  # evicted to make room
    wait_for(browser, '#events li[data-type="evicted"][data-model="big"]')
    gone(browser, '#memory-bar [data-model="big"]')
    assert "load other: other is loaded" in browser.find_element(By.ID, "message").text

    # the token is remembered for the session: no second prompt
    browser.find_element(
        By.CSS_SELECTOR, 'tr[data-model="other"] button[data-action="unload"]'
    ).click()
    wait_for(browser, 'tr[data-model="other"][data-state="unloaded"]')
    wait_for(browser, '#events li[data-type="unloaded"][data-model="other"]')
    state = httpx.get(f"{server.url}/models/other").json()["state"]
    assert state == "unloaded"
    screenshot = os.environ.get("DASHBOARD_SCREENSHOT")
    if screenshot:
        browser.save_screenshot(screenshot)


def test_a_wrong_token_is_reported_on_the_page(server: Process, browser) -> None:
    open_dashboard(browser, server)
    browser.find_element(
        By.CSS_SELECTOR, 'tr[data-model="m000"] button[data-action="load"]'
    ).click()
    for _ in range(2):  # asked again once after the 401
        alert = WebDriverWait(browser, WAIT).until(expected_conditions.alert_is_present())
        alert.send_keys("wrong")
        alert.accept()
    wait_for(browser, "#message.error")
    assert "missing or wrong admin token" in browser.find_element(By.ID, "message").text
    assert httpx.get(f"{server.url}/models/m000").json()["state"] == "unloaded"


GPU_CONFIG = """\
server:
  memory_budget: {cpu: 100MB, cuda:0: 300MB, cuda:1: 200MB}
  simulated_devices: {cuda:0: 1GB, cuda:1: 1GB}
  watch: false
models:
  g1: {loader: fake, device: cuda:1, options: {size: 1MB, device_bytes: 150MB}}
"""


@pytest.fixture
def gpu_server(tmp_path: Path) -> Iterator[Process]:
    config = tmp_path / "models.yaml"
    config.write_text(GPU_CONFIG)
    with serve(config, env={**os.environ, "MODEL_REGISTRY_ADMIN_TOKEN": TOKEN}) as process:
        process.wait_live(30.0)
        yield process
        assert process.stop() == 0, process.log


def test_one_memory_bar_per_device(gpu_server: Process, browser) -> None:
    """Under the host's bar, one bar per GPU: a model on cuda:1 is a segment of cuda:1's bar
    sized by its bytes there (its host-side bytes are in the host's bar), and cuda:0's bar
    stays empty."""
    browser.get(gpu_server.url + "/")
    wait_for(browser, '#connection[data-state="live"]')
    wait_for(browser, '#device-bars [data-device="cuda:0"] .memory-bar')
    wait_for(browser, '#device-bars [data-device="cuda:1"] .memory-bar')
    response = httpx.post(f"{gpu_server.url}/models/g1/predict", json={"inputs": "x"}, timeout=30)
    assert response.status_code == 200, response.text
    on_gpu = '#device-bars [data-device="cuda:1"] [data-model="g1"][data-state="loaded"]'
    wait_for(browser, on_gpu)
    segment = browser.find_element(By.CSS_SELECTOR, on_gpu)
    assert segment.get_attribute("data-bytes") == str(150 * 10**6)
    host = browser.find_element(By.CSS_SELECTOR, '#memory-bar [data-model="g1"]')
    assert host.get_attribute("data-bytes") == str(10**6)
    assert not browser.find_elements(By.CSS_SELECTOR, '#device-bars [data-device="cuda:0"] .seg')
    text = browser.find_element(By.CSS_SELECTOR, '#device-bars [data-device="cuda:1"] .device-text')
    assert text.text == "used 150.0 MB (reserved 0 B) of 200.0 MB, 1 model(s)"


TIER_CONFIG = """\
server:
  memory_budget: {cpu: 400MB, cuda:1: 200MB}
  simulated_devices: {cuda:1: 1GB}
  watch: false
models:
  g1: {loader: fake, device: cuda:1, options: {size: 1MB, device_bytes: 150MB, offload: true}}
  g2: {loader: fake, device: cuda:1, options: {size: 1MB, device_bytes: 150MB, offload: true}}
"""


def test_an_offloaded_model_moves_to_the_hosts_bar(tmp_path: Path, browser) -> None:
    """A model evicted from cuda:1 into host memory (the host-RAM tier) is shown offloaded:
    its row says so, and its segment leaves cuda:1's bar for the host's, with all its bytes."""
    config = tmp_path / "models.yaml"
    config.write_text(TIER_CONFIG)
    with serve(config, env={**os.environ, "MODEL_REGISTRY_ADMIN_TOKEN": TOKEN}) as server:
        server.wait_live(30.0)
        browser.get(server.url + "/")
        wait_for(browser, '#connection[data-state="live"]')
        for name in ("g1", "g2"):
            response = httpx.post(f"{server.url}/models/{name}/predict", json={"inputs": "x"})
            assert response.status_code == 200, response.text
        wait_for(browser, 'tr[data-model="g1"][data-state="offloaded"]')
        on_host = '#memory-bar [data-model="g1"][data-state="offloaded"]'
        wait_for(browser, on_host)
        segment = browser.find_element(By.CSS_SELECTOR, on_host)
        assert segment.get_attribute("data-bytes") == str(151 * 10**6)
        gone(browser, '#device-bars [data-device="cuda:1"] [data-model="g1"]')
        assert server.stop() == 0, server.log
