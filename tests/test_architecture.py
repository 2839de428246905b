"""ARCHITECTURE.md's module map holds: every module is on it, the parts import one another only
downwards through its layers, and no modules import each other in a cycle (imports inside
functions count: a lazy import is still a dependency; TYPE_CHECKING imports do not)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ovfkit"

# The layers of ARCHITECTURE.md, lowest first: a part imports only parts of a lower layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "_lazy", "limits"),
    ("progress", "model", "_args", "_extras"),
    ("model_json", "qemu", "ovf"),
    ("disk",),
    ("vmdk",),
    ("ova",),
    ("zstack",),
    ("db",),
    ("zstack-records",),
    ("server",),
    ("cluster",),
    ("cli",),
    ("__main__",),
)

# Cycles inside one part that their owners are taking apart; the test fails once one is gone,
# so that this list only shrinks (remove the entry then).
KNOWN_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, tuple[Path, str]]:
    """module name -> (file, the package its relative imports start from)."""
    out: dict[str, tuple[Path, str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.relative_to(PACKAGE).parts:
            continue  # Alembic's scripts, loaded by Alembic
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if name.endswith(".__init__"):
            name = name.removesuffix(".__init__")
            out[name] = (path, name)
        else:
            out[name] = (path, name.rpartition(".")[0])
    return out


MODULES = _modules()


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if node.level:
        base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        module = ".".join([*base, *([node.module] if node.module else [])])
    else:
        module = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{module}.{alias.name}"
        if sub in MODULES:
            out.append(sub)  # `from . import tar`: the submodule itself
        elif module in MODULES:
            out.append(module)
    return out


def _imports(name: str) -> set[str]:
    path, package = MODULES[name]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            test = ast.unparse(node.test) if isinstance(node, ast.If) else ""
            if test.endswith("TYPE_CHECKING") and not test.startswith("not"):
                visit(cast(ast.If, node).orelse)
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.update(t for t in _targets(node, package) if t != name)
                continue
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])
                elif isinstance(child, ast.excepthandler):
                    visit(child.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


# ZStack's modules that keep records sit above db (the SQL layer they store through), while db
# uses the pure ZStack wire shapes (inventory, tags, catalog) below it.
ZSTACK_RECORDS = frozenset({
    "ovfkit.zstack.records", "ovfkit.zstack.auth", "ovfkit.zstack.accesskeys",
    "ovfkit.zstack.context", "ovfkit.zstack.api",
})


def _part(module: str) -> str:
    if module in ZSTACK_RECORDS:
        return "zstack-records"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ovfkit"


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == {frozenset({"a", "b", "c"})}
    assert _cycles({"a": {"b"}, "b": set()}) == set()


def test_no_import_cycle() -> None:
    cycles = _cycles(GRAPH)
    assert cycles - KNOWN_CYCLES == set(), sorted(sorted(c) for c in cycles - KNOWN_CYCLES)
    assert KNOWN_CYCLES - cycles == set(), "a known cycle is gone: remove it from KNOWN_CYCLES"


def test_parts_import_downwards_only() -> None:
    rank = {part: n for n, layer in enumerate(LAYERS) for part in layer}
    parts = {_part(m) for m in MODULES} - {"ovfkit"}
    assert parts == set(rank), "a part is missing from LAYERS (and ARCHITECTURE.md)"
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in GRAPH.items()
        for target in targets
        if _part(source) != _part(target) and _part(source) != "ovfkit"
        and rank[_part(target)] >= rank[_part(source)]
    )
    assert upward == []
    # The package root imports only _lazy at run time (the rest under TYPE_CHECKING).
    assert GRAPH["ovfkit"] == {"ovfkit._lazy"}


def test_every_module_is_on_the_map() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = text.split("```\novfkit/\n", 1)[1].split("```", 1)[0]
    missing = []
    for path, _ in MODULES.values():
        rel = path.relative_to(PACKAGE)
        if rel.name in ("__init__.py", "__main__.py"):
            continue
        folder = f"{rel.parent.as_posix()}/" if rel.parent != Path(".") else ""
        if rel.name not in block or (folder and folder.split("/")[-2] + "/" not in block):
            missing.append(rel.as_posix())
    assert missing == []
    for layer in LAYERS:
        for part in layer:
            assert part in text.split("## Layers", 1)[1].split("##", 1)[0], part
