"""Scenario `protocols`: what speaking the Open Inference Protocol costs.

One server, langid and minilm hot. On one keep-alive connection, the native predict
(JSON) and the V2 infer in tritonclient's default form (binary BYTES input, binary outputs)
alternate request by request, on the same sentences; the row is V2 p50 minus native p50,
both from the round (of --reps) whose difference is the median one.
"""

from __future__ import annotations

import functools
import http.client
import json
import struct
import time
from typing import Any

from bench.context import Context
from bench.progress import progress
from bench.row import Row
from bench.servers import BATCH, model, ready_server, write_config
from bench.stats import percentile

PROTOCOL_MODELS = {"langid": "text", "minilm": "sentence"}
TARGET_MS = 0.2


def v2_binary_body(text: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers tritonclient's infer() sends for one string, binary in and out."""
    raw = text.encode()
    data = struct.pack("<I", len(raw)) + raw
    header = {
        "inputs": [
            {
                "name": "text",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(header).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }
    return head + data, headers


def _timed(
    conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]
) -> float:
    started = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"POST {path}: {response.status}")
    return elapsed


def _alternate(port: int, name: str, texts: list[str], count: int) -> dict[str, Any]:
    """`count` native and `count` V2 requests, interleaved (the order flips every pair)."""
    native = [
        (json.dumps({"inputs": t}).encode(), {"Content-Type": "application/json"}) for t in texts
    ]
    v2 = [v2_binary_body(t) for t in texts]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times: dict[str, list[float]] = {"native": [], "v2": []}
    try:
        for i in range(count + 20):
            j = i % len(texts)
            pair = [
                ("native", f"/models/{name}/predict", *native[j]),
                ("v2", f"/v2/models/{name}/infer", *v2[j]),
            ]
            for kind, path, body, headers in pair if i % 2 else reversed(pair):
                elapsed = _timed(conn, path, body, headers)
                if i >= 20:  # the first 20 pairs warm up
                    times[kind].append(elapsed)
    finally:
        conn.close()
    result: dict[str, Any] = {
        kind: {"p50_ms": percentile(values, 50) * 1e3, "p90_ms": percentile(values, 90) * 1e3}
        for kind, values in times.items()
    }
    # Neighbouring requests see the same machine: the median of their differences is a
    # second, noise-resistant view of the same cost.
    paired = [v - n for v, n in zip(times["v2"], times["native"], strict=True)]
    result["paired_delta_p50_ms"] = percentile(paired, 50) * 1e3
    result["delta_ms"] = result["v2"]["p50_ms"] - result["native"]["p50_ms"]
    return result


def protocols(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    """V2 binary infer p50 vs native predict p50, langid and minilm, one run, one server."""
    models = {name: model(name, hot=True, batch=BATCH) for name in PROTOCOL_MODELS}
    count = 100 if ctx.quick else 400
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    with ready_server(write_config(ctx.workdir, "protocols", models), "protocols") as server:
        for name, kind in PROTOCOL_MODELS.items():
            texts = ctx.inputs.texts if kind == "text" else ctx.inputs.sentences
            rounds = []
            for r in range(ctx.reps):
                once = functools.partial(_alternate, server.port, name, texts, count)
                result = ctx.quiet.measure(f"protocols {name}", [server.pid], once)
                rounds.append(result)
                progress(
                    f"  {name} round {r + 1}/{ctx.reps}: native p50 "
                    f"{result['native']['p50_ms']:.3f} ms, V2 binary p50 "
                    f"{result['v2']['p50_ms']:.3f} ms, paired difference "
                    f"{result['paired_delta_p50_ms']:+.3f} ms"
                )
            # Both figures from one round: the round whose delta is the median one.
            middle = sorted(rounds, key=lambda r: r["delta_ms"])[len(rounds) // 2]
            paired = sorted(r["paired_delta_p50_ms"] for r in rounds)[len(rounds) // 2]
            raw[name] = {"rounds": rounds, "median_round": middle, "paired_delta_ms": paired}
            rows.append(
                Row(
                    scenario=f"protocols: {name} V2 binary infer p50 vs native predict p50",
                    measured=middle["v2"]["p50_ms"],
                    baseline=middle["native"]["p50_ms"],
                    unit="ms",
                    compare="delta",
                    target=TARGET_MS,
                    note=f"median paired difference {paired:+.3f} ms",
                )
            )
    return rows, raw
