"""models.yaml text to a mapping: safe YAML with unique keys and bounded nesting.

Every problem is a ConfigError naming the file, with the line and column YAML reports.
"""

from __future__ import annotations

from typing import Any

import yaml

from registry.errors import ConfigError

MAX_DEPTH = 64  # nesting levels in models.yaml (options included)


def read_document(text: str, where: str) -> dict[Any, Any]:
    """The mapping a models.yaml holds (empty for an empty file); raise ConfigError if none."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(where, [_yaml_problem(exc)]) from None
    except RecursionError:  # a backstop: the loader bounds nesting well below the limit
        raise ConfigError(where, [f"YAML nests deeper than {MAX_DEPTH} levels"]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(where, ["the file must be a mapping with 'server:' and 'models:'"])
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys and nesting deeper than MAX_DEPTH."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # The composer recurses once per level: a file of 5,000 nested lists would end in
        # RecursionError instead of a config error.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"lists or mappings nest deeper than {MAX_DEPTH} levels; flatten the data",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "a key must be a plain value, not a list or mapping",
                    key_node.start_mark,
                ) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"YAML syntax: {problem}"
    return f"YAML syntax, line {mark.line + 1}, column {mark.column + 1}: {problem}"
