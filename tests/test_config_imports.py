"""The models.yaml and loader modules: no import cycles, and estimating a size imports no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import registry

ROOT = Path(registry.__file__).parent
# The modules that read models.yaml, resolve sources and estimate sizes (and registry.loaders.*).
CONFIG_MODULES = frozenset(
    {
        "registry.admin_token",
        "registry.config.schema",
        "registry.config.checks",
        "registry.config.devices",
        "registry.memory.device_budgets",
        "registry.memory.device_usage",
        "registry.memory.devices",
        "registry.config.file",
        "registry.config.messages",
        "registry.config.yaml_text",
        "registry.hfcache",
        "registry.memory.sizes",
        "registry.sources",
        "registry.loaders",
    }
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every registry module and the registry modules it imports anywhere in its code
    (at the top, under TYPE_CHECKING, or inside a function)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: set[str] = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports_of_this_change() -> None:
    graph = import_graph()
    assert "registry.config.schema" in graph["registry.config.file"]
    assert "registry.loaders" in graph["registry.config.checks"]  # a function-level import too
    assert "registry.loaders.fake" in graph["registry.loaders"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_the_config_and_loader_modules_are_in_no_import_cycle() -> None:
    def ours(module: str) -> bool:
        return module in CONFIG_MODULES or module.startswith("registry.loaders.")

    assert all(module in import_graph() for module in CONFIG_MODULES)
    tangled = [sorted(c) for c in cycles(import_graph()) if any(ours(m) for m in c)]
    assert tangled == []


def test_estimating_sizes_and_checking_a_config_import_no_torch(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n"
        "  f: {loader: fake, options: {size: 1MB}}\n"
        "  p: {task: text-classification, source: ./p}\n"
        "  e: {task: sentence-embeddings, source: ./e}\n"
        "  c: {loader: 'some.module:make', source: ./c}\n"
    )
    code = f"""
import sys
from registry.config.file import load_config
from registry.loaders import estimate_bytes
config = load_config({str(config)!r}, check_sizes=False)
print([estimate_bytes(spec, config.source_of(name)) for name, spec in config.models.items()])
print("torch" in sys.modules, "transformers" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[1000000, None, None, None]", "False False"]
