"""The package's imports run one way: no cycle, counting imports inside functions (which only hide one), and the
data package's steps import only the steps before them."""

import ast
from pathlib import Path

from tests.conftest import REPO

DATA_STEPS = ["sources", "standin", "statistics", "transforms", "shards", "classes", "in_memory", "sampling", "skips",
              "datamodule", "__main__"]
# The package's groups, lowest first: a module imports only from its own group and the groups before it.
LAYERS = [("files", "progress", "signals"), ("data",), ("model",), ("training",), ("study",), ("use",)]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file, with the packages that importing them runs
    (``a.b.c`` runs ``a`` and ``a.b`` first)."""
    files = {module_name(path, root): path for path in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        ran = {".".join(t.split(".")[: i + 1]) for t in targets for i in range(t.count(".") + 1)}
        graph[name] = {t for t in ran if t in files and t != name and not name.startswith(t + ".")}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := visit(target, path + [target])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph(REPO, "alexnet_lightning")
    assert "alexnet_lightning.data.datamodule" in graph and "alexnet_lightning.data.sources" in graph
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_each_data_step_imports_only_the_steps_before_it():
    graph = import_graph(REPO, "alexnet_lightning")
    steps = {f"alexnet_lightning.data.{step}" for step in DATA_STEPS}
    assert steps <= set(graph)
    for i, step in enumerate(DATA_STEPS):
        earlier = {f"alexnet_lightning.data.{s}" for s in DATA_STEPS[:i]}
        later = (graph[f"alexnet_lightning.data.{step}"] & steps) - earlier
        assert not later, f"{step} imports {sorted(later)}, which come after it"


def layer(module: str) -> int | None:
    part = module.split(".")[1] if "." in module else None
    return next((i for i, names in enumerate(LAYERS) if part in names), None)


def test_the_groups_import_only_downwards():
    graph = import_graph(REPO, "alexnet_lightning")
    package = Path(REPO, "alexnet_lightning")
    top = sorted(p.stem for p in package.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= 3, f"modules at the package's top: {top}"
    groups = sorted(p.name for p in package.iterdir() if (p / "__init__.py").is_file())
    assert set(top) | set(groups) == {name for names in LAYERS for name in names}, "a module or group not in LAYERS"
    for module, targets in graph.items():
        for target in targets:
            if layer(module) is not None and layer(target) is not None:
                assert layer(target) <= layer(module), f"{module} imports {target}, a group above it"


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.a import g\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.c"] == {"pkg.a"}  # its own package runs first anyway: not an edge
    assert cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
