"""scripts/gpu_check.sh, the GPU check a person runs on real hardware, on this machine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from devkit.demo import REPO
from registry.memory.devices import discover

SCRIPT = REPO / "scripts" / "gpu_check.sh"
no_gpu_here = pytest.mark.skipif(
    len(discover({}, gpus=True)) > 1, reason="this machine has a GPU: the check would run"
)


@no_gpu_here
def test_without_a_gpu_it_says_so_and_exits_0() -> None:
    """On a machine without a GPU the check prints one clear line saying why (what NVML and
    torch answered) and exits 0, so CI and laptops can run it."""
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith("gpu_check: no GPU found: NVML: ")
    assert "torch " in line
    assert line.endswith("Nothing to check on this machine.")


@pytest.mark.slow
def test_a_dry_run_on_the_host_goes_through_every_step(model_store: Path, tmp_path: Path) -> None:
    """--host-dry-run runs the whole check on the host (a real server, real requests, an
    unload, SIGTERM): every figure it can take without a GPU is there (the host's tracked
    bytes from GET /models' devices), the host-RAM tier's reload through the server says it
    needs a GPU, and the server exited 0."""
    out = tmp_path / "figures.json"
    argv = [str(SCRIPT), "--host-dry-run", "--model", "langid-bert", "--requests", "5"]
    done = subprocess.run([*argv, "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    assert figures["exit_code"] == 0
    assert figures["tracked_used_bytes"] > 0
    assert figures["server_warm_p50_ms"] > 0 and figures["in_process_warm_p50_ms"] > 0
    assert figures["load_from_disk_seconds"] > 0
    assert figures["server_reload_from_host_seconds"] is None  # the tier needs a GPU
    assert figures["tracked_cpu_used_bytes"] > 0 and figures["models_json_per_device"] == 1
    assert done.stdout.count("n/a on the host") == 1
