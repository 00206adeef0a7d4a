"""What the tests and the benchmarks share; not shipped in the wheel.

- `devkit.server`: a server process on loopback and a free port, stopped by its PID;
- `devkit.demo`: the demo models, read from the repository's models.yaml, and their builders
  (scripts/build_models.py);
- `devkit.browser`: headless Chromium for the dashboard's tests and its screenshot.

Importable from the repository root (pytest's `pythonpath`, `python -m bench`).
"""
