"""wrk, the load generator of the warm, throughput and isolation scenarios: scripts, runs."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.inputs import BOUNDARY
from bench.progress import progress

_LUA = r"""
local files = {FILES}
local kind = "{KIND}"
local boundary = "{BOUNDARY}"
local reqs = {}
local n = 0

function init(args)
  for k, path in ipairs(files) do
    local f = assert(io.open(path, "rb"))
    local data = f:read("*a")
    f:close()
    local body, ctype
    if kind == "image" then
      body = "--" .. boundary .. "\r\n" ..
        'Content-Disposition: form-data; name="file"; filename="digit.png"\r\n' ..
        "Content-Type: image/png\r\n\r\n" .. data .. "\r\n--" .. boundary .. "--\r\n"
      ctype = "multipart/form-data; boundary=" .. boundary
    else
      body = data
      ctype = "application/json"
    end
    reqs[k] = wrk.format("POST", nil, {["Content-Type"] = ctype}, body)
  end
end

function request()
  n = n % #reqs + 1
  return reqs[n]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


def wrk_path() -> str | None:
    """The wrk binary, if installed."""
    return shutil.which("wrk")


def wrk_version() -> str | None:
    """wrk's version line."""
    path = wrk_path()
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    line = (out.stdout or out.stderr).splitlines()[0].strip()  # "wrk debian/4.1.0-3+b2 [epoll] ..."
    return line.split(" [")[0]


def wrk_script(directory: Path, kind: str, files: Sequence[Path]) -> Path:
    """A Lua script that POSTs the files in turn: JSON bodies, or PNGs as multipart uploads."""
    lua_files = "{" + ", ".join(json.dumps(str(p)) for p in files) + "}"
    text = _LUA.replace("{FILES}", lua_files).replace("{KIND}", kind)
    path = directory / f"wrk-{kind}.lua"
    path.write_text(text.replace("{BOUNDARY}", BOUNDARY))
    return path


def run_wrk(
    port: int, name: str, script: Path, duration: float, connections: int
) -> dict[str, Any]:
    """wrk -t1 -c<connections> against POST /models/<name>/predict; the done() JSON."""
    path = wrk_path()
    if path is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    argv = [path, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "30s"]
    argv += ["--latency", "-s", str(script), f"http://127.0.0.1:{port}/models/{name}/predict"]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the one child reaped here
    wrk_cpu = sum(getattr(after, f) - getattr(children, f) for f in ("ru_utime", "ru_stime"))
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            result: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
            seconds = result["duration_us"] / 1e6
            result["rps"] = result["requests"] / seconds if seconds else 0.0
            result["wrk_cpu_s"] = wrk_cpu
            result["argv"] = " ".join([*argv[:-3], "-s", script.name, argv[-1]])
            errors = sum(result["errors"].values())
            if errors:
                progress(f"  wrk reported errors: {result['errors']}")
            return result
    raise RuntimeError(f"wrk printed no result (rc {out.returncode}):\n{out.stdout}\n{out.stderr}")
