"""Every third-party package that the package and the experiments import is declared in pyproject.toml."""

import ast
import re
import sys
from importlib.metadata import packages_distributions

from tests.conftest import PYPROJECT, REPO


def imported_modules(folders: list[str]) -> dict[str, str]:
    """{top-level module: the first file importing it} over the Python files of these folders."""
    found: dict[str, str] = {}
    for folder in folders:
        for file in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text(), str(file))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(file.relative_to(REPO)))
    return found


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_a_declared_dependency():
    declared = {normalised(re.split(r"[\s\[<>=!~;]", d, maxsplit=1)[0]) for d in PYPROJECT["project"]["dependencies"]}
    distributions = packages_distributions()  # module -> the installed distributions that provide it
    own = {"alexnet_lightning", "hubconf"} | {p.stem for p in (REPO / "experiments").glob("*.py")}
    third_party = {m: f for m, f in imported_modules(["alexnet_lightning", "experiments"]).items()
                   if m not in sys.stdlib_module_names and m not in own}
    assert {"torch", "lightning", "yaml", "PIL"} <= set(third_party)  # the parse found the imports
    undeclared = {m: f for m, f in third_party.items()
                  if not {normalised(d) for d in distributions.get(m, [m])} & declared}
    assert not undeclared, f"imported but not in pyproject.toml's dependencies (module: a file importing it): " \
                           f"{undeclared}"
