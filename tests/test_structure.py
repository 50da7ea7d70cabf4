"""How the code is put together: no import circles between fmgnn's modules."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fmgnn", "bleg", "fimp", "tune", "pipelines")


def module_imports() -> dict[str, set[str]]:
    """Each module's imports of the project's own modules, lazy ones inside functions included."""
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts): p
               for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    modules = {name.removesuffix(".__init__"): path for name, path in modules.items()}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            found |= {c for c in candidates if c in modules and c != name}
        graph[name] = found
    return graph


def test_no_module_imports_a_module_that_imports_it():
    graph = module_imports()
    cycles = []

    def visit(name, path):
        for target in graph[name]:
            if target == path[0]:
                cycles.append(" -> ".join([*path, target]))
            elif target not in path and target > path[0]:  # each cycle once, from its smallest module
                visit(target, [*path, target])

    for start in graph:
        visit(start, [start])
    assert not cycles, "import circles:\n" + "\n".join(cycles)
