"""The layer order is a contract: a package imports only from its own layer or lower ones.

Read from the source (every `import`, function-local ones included), so a lazy import
inside a function cannot hide an upward dependency. Imports under `if TYPE_CHECKING:` count
for the layer rule too: a lower layer names what it needs of an upper one as a `Protocol`
of its own (`checks.partition.DriftReferences`, `compute.coverage.StoredDays`). They are
left out of the cycle rule only (nothing is imported at run time).

Layers, bottom to top (docs/architecture.md, "Layers"):
0. errors, config, asset_keys, language: the definition language and its vocabulary
1. checks: data-quality rules over frames
2. compute: transformations, windows, point-in-time joins (over frames and partition lists)
3. storage: the offline and online stores, their layouts and codecs
4. repository, registry: loading a feature repository, its lock and catalog
5. serving, client: `FeatureStore`, the read path, the HTTP server
6. the Dagster layer: feature_assets, resources, sensors, the CLI, the demo
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "skewless"

LAYERS: dict[str, int] = {
    "errors": 0,
    "config": 0,
    "asset_keys": 0,
    "language": 0,
    "checks": 1,
    "compute": 2,
    "storage": 3,
    "repository": 4,
    "registry": 4,
    "vectors": 4,  # indexes over stored embeddings: storage below, the client and assets above
    "serving": 5,
    "client": 5,
    "feature_assets": 6,
    "resources": 6,
    "sensors": 6,
    "cli": 6,
    "demo": 6,
    "demo_checks": 6,
    "scaffold": 6,
    "progress": 6,
    "__init__": 6,  # the package's public names, resolved lazily
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The first component under `skewless` (`skewless` itself is the package's `__init__`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports() -> list[tuple[str, str, int, bool]]:
    """(importing module, imported module, line, type-checking only) for every skewless import."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        typing_only = _type_checking_lines(tree)
        source = module_name(path)
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from skewless import asset_keys` imports a module, not a name
                targets = [
                    f"{node.module}.{alias.name}"
                    if node.module == "skewless" and alias.name in LAYERS
                    else node.module
                    for alias in node.names
                ]
            for target in targets:
                if target == "skewless" or target.startswith("skewless."):
                    found.append((source, target, node.lineno, node.lineno in typing_only))
    return found


def test_every_package_has_a_layer() -> None:
    units = {unit(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LAYERS), f"give these a layer in tests/test_layers.py: {sorted(units - set(LAYERS))}"


def test_no_package_imports_a_higher_layer() -> None:
    """Type-checking imports too: a lower layer names what it needs as a `Protocol`."""
    upward = [
        f"{source} (layer {LAYERS[unit(source)]}) imports {target} "
        f"(layer {LAYERS[unit(target)]}) at line {line}"
        for source, target, line, _ in imports()
        if LAYERS[unit(target)] > LAYERS[unit(source)]
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_import_cycles_between_modules() -> None:
    """Function-local imports included: a cycle hidden in a function is still a cycle."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target, _, typing_only in imports():
        if typing_only:
            continue
        while target not in modules and "." in target:  # `from skewless.x import name`
            target = target.rsplit(".", 1)[0]
        if target != source and target in modules and target != "skewless":
            graph[source].add(target)
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_upward_imports(tmp_path: Path) -> None:
    """The rule can fail: a lazy upward import inside a function is found."""
    tree = ast.parse("def f():\n    from skewless.client.feature_store import FeatureStore\n")
    node = tree.body[0].body[0]  # type: ignore[attr-defined]
    assert isinstance(node, ast.ImportFrom) and node.module is not None
    assert LAYERS[unit(node.module)] > LAYERS[unit("skewless.checks.partition")]
