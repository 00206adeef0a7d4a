"""The benchmark suite: each scenario against a baseline measured in the same run.

`python -m bench` (behind scripts/bench.sh) runs it; docs/benchmarks.md says what each
scenario measures and how. Modules: `cli` (options) and `suite` (the run, BENCHMARKS.*);
one module per scenario (`startup`, `cold`, `warm`, `throughput`, `isolation`, `stampede`,
`memory`, `protocols`, `ray_scale`, `trace`, `observe`, `workers`); their plumbing: `context`
(what every scenario gets), `quiet` (waits for other processes), `servers`, `client`,
`inputs`, `wrk`, `rounds`, `background`, `stats`, `row`, `report`, `machine`, `progress`;
baselines in processes of their own: `inproc`, `bare_app`, `trace_run` (with `trace_sim`,
the offline bounds). Server processes and the demo models come from `devkit`.
"""
