"""`python -m app.cli`: the `model-registry` command."""

from app.cli.commands import main

raise SystemExit(main())
