"""`python -m bench`: run the benchmark suite (scripts/bench.sh is the usual way in)."""

from bench.cli import main

raise SystemExit(main())
