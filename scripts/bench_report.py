"""The results of the benchmark suite: table rows, the terminal table, BENCHMARKS.md."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_common import REPO
from bench_wrk import wrk_version

MARK_START = "<!-- analysis:start -->"
MARK_END = "<!-- analysis:end -->"


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    measured: float
    baseline: float
    unit: str
    compare: str  # "ratio" (measured / baseline) or "delta" (measured - baseline)
    target: float | None  # the ratio or delta bound; None for rows given for comparison
    higher_is_better: bool = False
    note: str = ""

    @property
    def value(self) -> float:
        """The ratio or the delta."""
        if self.compare == "ratio":
            return self.measured / self.baseline if self.baseline else math.nan
        return self.measured - self.baseline

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None: no target)."""
        if self.target is None or math.isnan(self.value):
            return None
        if self.higher_is_better:
            return self.value >= self.target
        return self.value <= self.target

    def target_text(self) -> str:
        """The target as the table shows it."""
        if self.target is None:
            return "(info)"
        op = ">=" if self.higher_is_better else "<="
        if self.compare == "ratio":
            return f"{op} {self.target:g}x"
        return f"{op} +{self.target:g} {self.unit}"

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "scenario": self.scenario,
            "measured": self.measured,
            "baseline": self.baseline,
            "unit": self.unit,
            "compare": self.compare,
            "value": self.value,
            "target": self.target_text(),
            "met": self.met,
            "note": self.note,
        }


METHODS = """\
All servers are `.venv/bin/model-registry serve --config <temp models.yaml> --host 127.0.0.1
--port <free port> --no-access-log`, one process each, stopped by PID (SIGTERM, wait, SIGKILL).
The configs use the default models.yaml's entries with absolute `source:` paths. In-process
baselines run in a separate Python process (`scripts/bench_inproc.py`) that imports and
configures torch/transformers exactly like the server's loader before any timed section
(`HF_HUB_OFFLINE=1`, `TOKENIZERS_PARALLELISM=false`, and the server's intra-op thread count:
`torch.set_num_threads(default_threads())` imported from `registry/loaders/torch_setup.py`,
i.e. one per core but one, so 1 on 2 cores; the baseline and the server compute with the same
threads). Pipelines are called as a user calls them for one input, `pipe(x)`; minilm
(`sentence-embeddings`, not a transformers pipeline) is loaded by the registry's own loader
(`registry.loaders.load_model`: AutoTokenizer + AutoModel + mean pooling) and called as
`model.predict([x], {})`. Inputs are deterministic: 16 held-out digits
(`digit_image(1437..1452)`, PNG), 16 langid sentences (`langid_sentence(lang, seed)`, the 7
languages in turn) and, for minilm, 16 English-word sentences of 8-20 words
(`embedding_sentence(0..15)` in bench_http.py), sent in turn.

- **startup**: wall time from `Popen` to the first 200 of `GET /health/live` (polled every
  5 ms with raw sockets), for the default registry (digits + langid hot, preloading in the
  background) and for the same registry with no hot model; the baseline is a bare FastAPI app
  with that one route, run by the same python under `uvicorn.Server`, `log_config=None`.
  One discarded warm-up round, then N rounds interleaved; medians.
- **cold**: a fresh server with `digits` hot (so the server's imports are paid; waits for
  `/health/ready`), then one request to the lazy `langid` minus the median of 5 warm requests
  (each request on a pre-opened raw socket). Baseline: a fresh process that builds the digits
  pipeline, then times `transformers.pipeline("text-classification", model=<dir>)`. "Reload
  after an unload" (when the admin API exists): unload, request again, 3 times per server,
  against 3 re-constructions after `del` + `gc.collect()` in the baseline process. Medians.
- **warm**: wrk, 1 thread, 1 keep-alive connection (after a 2 s warm-up), against
  `POST /models/{name}/predict`: digits as a multipart PNG upload, langid as JSON; 3 rounds of
  D/3 seconds, the models interleaved, medians over the rounds. Baseline: the same pipeline
  called in-process on the same inputs (decoded PIL images / strings), one per call, for D
  seconds; medians over the run's thirds. p50 target: within +2 ms of in-process.
- **throughput**: wrk, 1 thread, 16 connections, 3 rounds of D/3 seconds (medians), on
  digits (multipart PNG), langid (JSON text) and minilm (JSON text, 384-d vectors back), each
  with `batch: {max_size: 32, max_wait_ms: 5}` (models.yaml) and without `batch:`; digits and
  langid also with `{max_size: 16, max_wait_ms: 5}` (info: the batcher now aims at the size of
  recent batches, so tuning max_size to the client count should change nothing). All variants
  are hot in one server; the notes give the mean batch size from `GET /models`
  (`batches.inputs / batches.batches`, warm-up included) and flag a `load_count` other than 1
  or any wrk error / non-2xx. Baseline: the in-process sequential rate (one input per call, in
  a loop, D seconds; the same run as the warm baseline for digits and langid). The
  "torch_threads=all cores" row: a second server with `server: {torch_threads: <cores>}`
  serving minilm and langid (both 32/5ms), the same wrk runs, against the minilm loop with
  `torch.set_num_threads(<cores>)`; its note adds langid's rate in that server and, in both
  servers, langid's first request after an admin unload minus a warm one (median of 3).
- **isolation**: langid p99 (wrk -c1, D seconds) while another thread loads and unloads
  bert-memory-demo (~266 MB) in a loop (admin API `POST .../load` or a predict, then
  `POST .../unload`; without the admin API: predict it, then predict minilm, which the budget
  can only fit by evicting it), vs. the mean p99 of the same run before and after, with no load.
- **stampede**: 64 raw-socket connections opened first, then 64 requests to cold langid written
  in one loop; `load_count` from `GET /models/langid` must grow by exactly 1; the slowest of the
  64 vs. a single cold request, made cold the same way (admin unload after one unmeasured
  load, or a fresh server). Medians over N rounds.
- **memory**: budget 300 MiB (bert-memory-demo + minilm do not fit together). The first load
  of each kind of model pays one-time costs that stay in the process (imports, tokenizer and
  model classes, allocator growth: the first model load in a process pays the imports and
  ~100 MiB that stays), so the pre-load level is read after those costs are paid
  for every model the run uses: digits, langid, iris, minilm, bert-memory-demo are each loaded
  (a predict) and unloaded once, one at a time, then VmRSS is read from `/proc/<pid>/status`
  (median of 5). The old pre-level, after digits, langid and iris only, is kept as an (info)
  row. Then requests alternate bert-memory-demo, langid,
  minilm, digits, iris (evictions), then two clients at once for D seconds, while another
  thread samples `used_bytes` of `GET /models` every 20 ms (and the server's
  `peak_used_bytes`). Then every model is unloaded (admin API; else `idle_ttl: 1s`) and VmRSS
  is read again. Leak check: the same final reading against the level after the first
  eviction cycle (every model loaded once more, then all unloaded).

Load generators: wrk (Lua scripts built by the suite: POST of JSON files; multipart bodies
built in Lua around the PNG files with a fixed boundary; a `done()` hook prints JSON with the
latency percentiles and counts) for warm, throughput and isolation; Python raw sockets for
startup polling, cold requests and the stampede; stdlib `http.client` for control requests.
"""


def fmt(value: float, unit: str) -> str:
    """A number with its unit, to a sensible precision."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "ms":
        return f"{value:.2f} ms" if abs(value) < 10 else f"{value:.0f} ms"
    if unit == "req/s":
        return f"{value:.0f} req/s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    return f"{value:g} {unit}"


def cells(row: Row) -> list[str]:
    """A row as table cells."""
    value = f"{row.value:.2f}x" if row.compare == "ratio" else f"{row.value:+.2f} {row.unit}"
    met = {True: "yes", False: "NO", None: "-"}[row.met]
    return [
        row.scenario,
        fmt(row.measured, row.unit),
        fmt(row.baseline, row.unit),
        value,
        row.target_text(),
        met,
    ]


HEADER = ["scenario", "measured", "baseline", "ratio / delta", "target", "met?"]


def text_table(rows: list[Row]) -> str:
    """The table for a terminal."""
    table = [HEADER] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    """The table in Markdown."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def max_others(raw: Any) -> float:
    """The most cores other processes used during any measurement of a scenario."""
    if isinstance(raw, dict):
        values = [max_others(v) for v in raw.values()]
        own = raw.get("others_cores")
        if isinstance(own, int | float):
            values.append(float(own))
        return max(values, default=0.0)
    if isinstance(raw, list):
        return max((max_others(v) for v in raw), default=0.0)
    return 0.0


def kept_analysis(path: Path) -> str:
    """The hand-written analysis section of an existing BENCHMARKS.md."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start < 0 or end < start:
        return ""
    return text[start + len(MARK_START) : end].strip()


def markdown(report: dict[str, Any], rows: list[Row], analysis: str) -> str:
    """BENCHMARKS.md."""
    m = report["machine"]
    unmet = [r for r in rows if r.met is False]
    parts = [
        "# Benchmarks",
        "",
        "Generated by `scripts/bench.sh`; every figure is measured against a baseline in the "
        "same run (the machine is shared and noisy), so read the ratio / delta column. "
        "Raw numbers: `BENCHMARKS.json`.",
        "",
        f"- **Command:** `{report['command']}`",
        f"- **Date:** {report['date']} (suite took {report['seconds']:.0f} s)",
        f"- **Machine:** {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}, no GPU",
        f"- **Software:** Python {m['python']}, torch {m['torch']}, transformers "
        f"{m['transformers']}, fastapi {m['fastapi']}, starlette {m['starlette']}, uvicorn "
        f"{m['uvicorn']} (HTTP parser: "
        + ("httptools" if m.get("httptools") else "h11, httptools not installed")
        + ", event loop: "
        + ("uvloop" if m.get("uvloop") else "asyncio, uvloop not installed")
        + f"), load generator {m['wrk'] or 'wrk not installed'}",
        f"- **Code:** git {m['git']}",
        f"- **Settings:** {report['settings']['reps']} repetitions, "
        f"{report['settings']['duration']:g} s per wrk run"
        + (", --quick" if report["settings"]["quick"] else ""),
        "",
        markdown_table(rows),
        "",
    ]
    notes = [f"- {r.scenario}: {r.note}" for r in rows if r.note]
    if notes:
        parts += ["Notes:", "", *notes, ""]
    for name, error in report["errors"].items():
        parts.append(f"- **{name}** did not run: {error}")
    if report["errors"]:
        parts.append("")
    parts += ["## Not met", ""]
    if unmet:
        parts += [f"- {r.scenario}: {cells(r)[3]} (target {r.target_text()})" for r in unmet]
    else:
        parts.append("Every target with a bound was met in this run.")
    parts += [
        "",
        "## Analysis",
        "",
        MARK_START,
        analysis or "(no analysis written yet)",
        MARK_END,
        "",
        "## How each scenario is measured",
        "",
        METHODS,
    ]
    return "\n".join(parts)


# ------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """CPU, cores, RAM and the versions that matter."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration):
        mem_kib = 0
    versions: dict[str, str | None] = {}
    packages = ("torch", "transformers", "fastapi", "starlette", "uvicorn", "httptools", "uvloop")
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    git = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(  # the suite's own outputs do not count
        [
            "git",
            "-C",
            str(REPO),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!BENCHMARKS.md",
            ":!BENCHMARKS.json",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024**2, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **versions,
        "wrk": wrk_version(),
        "git": f"{git}{' (with uncommitted changes)' if dirty else ''}",
    }
