"""The import graph of src/: no cycles (a module's imports inside functions count too), and no module reaches
into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "xclip_lightning"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[tuple[str, str]]]:
    """module -> {(imported module, imported name)} for every import of this package, anywhere in the module."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[tuple[str, str]]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("xclip_lightning"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    graph[name].add((target, "") if target in modules else (node.module, alias.name))
            elif isinstance(node, ast.Import):
                graph[name] |= {(a.name, "") for a in node.names if a.name.startswith("xclip_lightning")}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    cycles: list[str] = []
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycles_between_modules():
    graph = {m: {t for t, _ in targets if t != m} for m, targets in imports().items()}
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(cycles)


def part(module: str) -> str:
    """The package part a module belongs to: its folder under xclip_lightning (data, model, index, inputs...) or,
    for a top-level module, the module itself."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def test_no_import_cycles_between_folders():
    """data, model, index, inputs and the top-level modules depend on each other one way only."""
    graph: dict[str, set[str]] = {}
    for module, targets in imports().items():
        if module == "xclip_lightning":  # the package's public names (lazy re-exports) are not a part
            continue
        for target, _ in targets:
            if target != "xclip_lightning" and part(target) != part(module):
                graph.setdefault(part(module), set()).add(part(target))
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(cycles)


def test_no_module_imports_private_names_of_another():
    private = [
        f"{m} imports {name} from {target}"
        for m, targets in imports().items()
        for target, name in targets
        if name.startswith("_") and target != m
    ]
    assert not private, private
