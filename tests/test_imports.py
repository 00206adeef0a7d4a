"""The core (every module under registry/) is in no import cycle, counting the imports
under TYPE_CHECKING and inside functions as edges too."""

from __future__ import annotations

from test_config_imports import cycles, import_graph


def test_the_graph_counts_type_checking_imports() -> None:
    graph = import_graph()
    assert "registry.slot" in graph  # every module of the core is a node
    assert "registry.batching" in graph["registry.slot"]  # a TYPE_CHECKING import


def test_the_core_is_in_no_import_cycle() -> None:
    found = [" -> ".join(sorted(component)) for component in cycles(import_graph())]
    assert found == [], f"import cycles in registry/: {found}"
