"""The one way in to models.yaml: `load_config(path)` reads, parses, validates and checks it.

Each step has its module: `config_yaml` (YAML text to a mapping), `config` (the schema),
`config_messages` (schema errors as users read them), `config_checks` (the files: sources
exist, sizes fit the budget). Every problem is a ConfigError naming the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import ValidationError

from registry.config.checks import check_config
from registry.config.messages import describe, name_problems
from registry.config.schema import Config, Document
from registry.config.yaml_text import read_document
from registry.errors import ConfigError


def parse_config(text: str, path: Path) -> Config:
    """Parse models.yaml text; raise ConfigError listing every problem."""
    where = str(path)
    raw = read_document(text, where)
    problems = name_problems(raw.get("models"))
    try:
        document = Document.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(where, problems + [describe(e) for e in exc.errors()]) from None
    if problems:
        raise ConfigError(where, problems)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Config(path=path, server=document.server, models=dict(document.models), digest=digest)


def load_config(path: str | Path, *, check_sizes: bool = True) -> Config:
    """Read, parse and check models.yaml; raise ConfigError naming the file, model and field."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["the file is not UTF-8 text"]) from None
    config = parse_config(text, path)
    if check_sizes:
        check_config(config)
    return config
