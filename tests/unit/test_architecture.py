"""The shape of the package: no import cycles, and no module using another's private members.

Imports are read from the source with :mod:`ast`, including imports inside functions
(they still form a cycle, only a lazy one); imports under ``if TYPE_CHECKING:`` are for
the type checker alone and are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import phaseledger

ROOT = Path(phaseledger.__file__).parent
PACKAGE = "phaseledger"

# Private members of dependencies used where they have no public equivalent: each use is
# isolated in this one module, which says why, and tests/unit/test_faults.py fails loudly
# when the dependency moves them.
DEPENDENCY_INTERNALS = {"phaseledger.store._internals"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, except what sits under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package_of(module).split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> set[str]:
    """The phaseledger modules ``module`` imports at run time (a package's ``__init__`` counts)."""
    tree = ast.parse(MODULES[module].read_text())
    targets: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            names = [f"{source}.{alias.name}" for alias in node.names]
            if any(name not in MODULES for name in names):  # a name defined by the module, not a submodule
                names.append(source)
        else:
            continue
        for name in names:
            if name in MODULES and name != module:
                targets.add(name)
    return targets


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _import_graph() -> dict[str, set[str]]:
    return {module: _imports(module) for module in MODULES}


def test_there_are_no_import_cycles() -> None:
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def _defined_privates(tree: ast.AST) -> set[str]:
    """The ``_names`` a module defines itself: functions, classes, assignments, attributes of ``self``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.keyword) and node.arg:
            names.add(node.arg)  # dataclasses.replace(x, _field=...), slots given by name
    return {n for n in names if n.startswith("_")}


PUBLIC_DESPITE_UNDERSCORE = {
    "_exit",  # os._exit: the documented way for a forked child to end
    "_asdict", "_replace", "_make", "_fields", "_field_defaults",  # named tuples' API (underscored not to clash with fields)
}


def _is_private(name: str) -> bool:
    if name in PUBLIC_DESPITE_UNDERSCORE:
        return False
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(module: str) -> list[str]:
    tree = ast.parse(MODULES[module].read_text())
    own = _defined_privates(tree)
    package = _package_of(module)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            parts = source.split(".")
            for depth, part in enumerate(parts):
                owner = ".".join(parts[:depth])
                if _is_private(part) and source.startswith(PACKAGE) and not package.startswith(owner):
                    found.append(f"{module}:{node.lineno} imports {source}, private to {owner}")
            for alias in node.names:
                if _is_private(alias.name) and f"{source}.{alias.name}" not in MODULES:
                    found.append(f"{module}:{node.lineno} imports {alias.name} from {source}")
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            if isinstance(node.value, ast.Attribute):  # self.engine._x: another object's member
                found.append(f"{module}:{node.lineno} uses {ast.unparse(node)}, a member of another object")
            elif isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue  # its own or inherited (a base class's protected API, e.g. eventsourcing's _create)
            elif node.attr not in own:
                found.append(f"{module}:{node.lineno} uses {ast.unparse(node)}, which it does not define")
    return found


def test_no_module_uses_another_modules_private_members() -> None:
    uses = [use for module in MODULES if module not in DEPENDENCY_INTERNALS for use in _private_uses(module)]
    assert not uses, "private members used across modules:\n" + "\n".join(uses)


# The layers of docs/architecture.md, each with the layers its modules may import.
# engine/engine.py (the Engine facade) and workers/service.py sit above the runtime they compose.
LAYERS = {
    "domain": set(),
    "store": {"domain"},
    "projections": {"domain", "store"},
    "engine": {"domain", "store"},
    "history": {"domain", "store", "engine"},
    "workers": {"domain", "store", "engine"},
    "facade": {"domain", "store", "engine", "history", "workers", "projections"},
    "agents": {"domain", "store", "engine", "facade"},
    "service": {"domain", "store", "engine", "workers", "facade"},
    "testing": {"domain", "store", "engine", "facade", "dispatch"},
    "dispatch": {"domain", "store", "engine", "facade"},
    "deploys": {"domain", "store", "engine", "facade"},
    "cli": {"root", "domain", "store", "engine", "history", "workers", "projections", "facade", "service", "agents",
            "deploys", "web"},
    "web": {"root", "domain", "store", "engine", "history", "workers", "projections", "facade"},
    "demo": {"root", "cli", "testing"},
}
ALLOWED_UPWARD = {
    # ctx.run_agent() imports the agents' runner when it is called: pydantic-ai loads only
    # when agents are used, and the runner itself imports no engine module above the journal.
    ("phaseledger.engine.context", "phaseledger.agents.run"),
}


def _layer(module: str) -> str:
    if module == PACKAGE:
        return "root"
    if module == "phaseledger.engine.engine":
        return "facade"
    if module == "phaseledger.workers.service":
        return "service"
    return module.split(".")[1]


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = [
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, targets in _import_graph().items() if _layer(module) != "root"
        for target in sorted(targets)
        if _layer(target) != _layer(module) and _layer(target) not in LAYERS[_layer(module)]
        and (module, target) not in ALLOWED_UPWARD
    ]
    assert not wrong, "imports against the layers of docs/architecture.md:\n" + "\n".join(wrong)
