#!/usr/bin/env python3
"""Take docs/dashboard.png: a server of fake models in several states, seen in headless Chromium.

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/dashboard.png]

Needs Debian's chromium and chromium-driver (scripts/setup.sh installs them).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

REPO = Path(__file__).resolve().parent.parent
TOKEN = "screenshot"
CONFIG = """\
server: {memory_budget: 300MiB, watch: false, idle_ttl: 30m}
models:
  reranker: {loader: fake, description: a cross-encoder, options: {size: 120MB, load_seconds: 0.4}}
  embedder: {loader: fake, hot: true, options: {size: 80MB, load_seconds: 0.3}}
  digits: {loader: fake, hot: true, pinned: true, options: {size: 95kB}}
  langid: {loader: fake, idle_ttl: 2m, options: {size: 820kB, load_seconds: 0.1}}
  ocr: {loader: fake, options: {size: 150MB, load_seconds: 600}}
  summariser: {loader: fake, options: {size: 140MB, load_seconds: 0.5}}
  spam-filter: {loader: fake, options: {size: 5MB, fail: "no model.safetensors in ./store/spam"}}
  translator: {loader: fake, options: {size: 60MB}}
"""


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> int:
    """Start the server, put models in several states, take the screenshot, stop the server."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dashboard-"))
    (work / "models.yaml").write_text(CONFIG)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MODEL_REGISTRY_ADMIN_TOKEN": TOKEN, "SE_OFFLINE": "true"}
    cli = [sys.executable, "-m", "app.cli"]
    server = subprocess.Popen(
        [*cli, "serve", "--config", str(work / "models.yaml"), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        for name in ("summariser", "reranker", "langid"):  # reranker evicts summariser
            httpx.post(f"{url}/models/{name}/load", headers=auth, timeout=60)
        for _ in range(40):
            httpx.post(f"{url}/models/langid/predict", json={"inputs": "hallo"}, timeout=10)
        httpx.post(f"{url}/models/spam-filter/predict", json={"inputs": "x"}, timeout=10)
        httpx.post(f"{url}/admin/reload", headers=auth, timeout=10)
        subprocess.Popen(  # stays loading (600 s) while the picture is taken
            [*cli, "load", "ocr", "--url", url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/models/ocr").json()["state"] != "loading":
            if time.monotonic() > deadline:
                raise SystemExit("ocr never started loading")
            time.sleep(0.1)
        options = Options()
        options.binary_location = "/usr/bin/chromium"
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,760",
            f"--user-data-dir={work / 'profile'}",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(
            service=Service(executable_path="/usr/bin/chromedriver"), options=options
        )
        try:
            driver.get(url + "/dashboard")
            time.sleep(2.5)  # a picture, not a test: let the page settle
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
