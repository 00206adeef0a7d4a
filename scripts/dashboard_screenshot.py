#!/usr/bin/env python3
"""Take docs/dashboard.png: a server of fake models in several states, seen in headless Chromium.

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/dashboard.png]

Needs Debian's chromium and chromium-driver (scripts/setup.sh installs them). The server and
the browser are devkit's (shared with tests/test_dashboard.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devkit, run from anywhere

from devkit import browser
from devkit.demo import REPO
from devkit.server import CLI, Process, serve

TOKEN = "screenshot"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
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


def set_the_scene(url: str) -> None:
    """Loads, an eviction, traffic, a failure and a config reload."""
    for name in ("summariser", "reranker", "langid"):  # reranker evicts summariser
        httpx.post(f"{url}/models/{name}/load", headers=AUTH, timeout=60)
    for _ in range(40):
        httpx.post(f"{url}/models/langid/predict", json={"inputs": "hallo"}, timeout=10)
    httpx.post(f"{url}/models/spam-filter/predict", json={"inputs": "x"}, timeout=10)
    httpx.post(f"{url}/admin/reload", headers=AUTH, timeout=10)


def start_loading(url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`model-registry load ocr`, which stays loading (600 s) while the picture is taken."""
    loader = subprocess.Popen(
        [*CLI, "load", "ocr", "--url", url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/models/ocr").json()["state"] != "loading":
        if time.monotonic() > deadline:
            raise SystemExit("ocr never started loading")
        time.sleep(0.1)
    return loader


def screenshot(server: Process, work: Path, out: Path) -> None:
    """The dashboard in headless Chromium, saved as a PNG."""
    driver = browser.headless(work / "profile", 1400, 760)
    try:
        driver.get(server.url + "/dashboard")
        time.sleep(2.5)  # a picture, not a test: let the page settle
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> int:
    """Start the server, put models in several states, take the screenshot, stop the server."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dashboard-"))
    (work / "models.yaml").write_text(CONFIG)
    env = {**os.environ, "MODEL_REGISTRY_ADMIN_TOKEN": TOKEN, "SE_OFFLINE": "true"}
    with serve(work / "models.yaml", env=env) as server:
        server.wait_ready(60.0)
        set_the_scene(server.url)
        loader = start_loading(server.url, env)
        try:
            screenshot(server, work, args.out)
        finally:
            loader.terminate()
            loader.wait()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
