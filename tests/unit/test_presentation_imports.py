"""The presentation layer's import rules, read from the source (imports inside functions count).

- All typer and rich code is under ``phaseledger/cli``, except the demo's (a presentation
  of its own).
- The demo uses public API only: names exported by ``phaseledger`` and ``phaseledger.cli``,
  and its own modules. The command runs the demo as a program and imports nothing of it,
  so ``phaseledger.cli`` and ``phaseledger.demo`` never import each other both ways.
- Neither package uses another package's ``_private`` modules or names.
- The web view's dependencies (starlette, jinja2, uvicorn) are imported only under
  ``phaseledger/web``, and by the ``serve`` command; the web view imports nothing of the
  command line (nor the command line anything of the web view but its package's names).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import phaseledger
import phaseledger.cli
import phaseledger.testing.dispatchers

PACKAGE = Path(phaseledger.__file__).resolve().parent


@dataclass(frozen=True)
class Import:
    """One name a module imports: ``module`` (absolute) and ``name`` (None for ``import module``)."""

    source: str
    line: int
    module: str
    name: str | None

    def __str__(self) -> str:
        what = f"from {self.module} import {self.name}" if self.name else f"import {self.module}"
        return f"{self.source}:{self.line}: {what}"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[Import]:
    """Every import of a module, at any depth (functions, TYPE_CHECKING blocks)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    source = str(path.relative_to(PACKAGE.parent))
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(source, node.lineno, alias.name, None)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                yield Import(source, node.lineno, base, alias.name)


def modules_of(package: str) -> list[Path]:
    return sorted((PACKAGE / package).rglob("*.py"))


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def private_parts(found: Import) -> list[str]:
    """The ``_private`` parts of an import: module path components and the name."""
    parts = [p for p in found.module.split(".") if p.startswith("_") and not p.startswith("__")]
    if found.name and found.name.startswith("_") and not found.name.startswith("__"):
        parts.append(found.name)
    return parts


def test_typer_and_rich_are_used_only_by_the_cli_and_the_demo() -> None:
    outside = [
        str(found)
        for path in sorted(PACKAGE.rglob("*.py"))
        if not (within(module_name(path), "phaseledger.cli") or within(module_name(path), "phaseledger.demo"))
        for found in imports(path)
        if within(found.module, "typer") or within(found.module, "rich")
    ]
    assert outside == []


WEB_DEPENDENCIES = ("starlette", "jinja2", "uvicorn", "fastapi")


def test_the_web_dependencies_are_used_only_by_the_web_view_and_serve() -> None:
    outside = [
        str(found)
        for path in sorted(PACKAGE.rglob("*.py"))
        if not within(module_name(path), "phaseledger.web") and module_name(path) != "phaseledger.cli.serve"
        for found in imports(path)
        if any(within(found.module, dependency) for dependency in WEB_DEPENDENCIES)
    ]
    assert outside == []


def test_the_web_view_and_the_cli_keep_apart() -> None:
    web_uses_cli = [str(f) for path in modules_of("web") for f in imports(path) if within(f.module, "phaseledger.cli")]
    assert web_uses_cli == []
    cli_uses_web = [str(f) for path in modules_of("cli") for f in imports(path)
                    if within(f.module, "phaseledger.web") and f.module != "phaseledger.web"]
    assert cli_uses_web == []


def test_importing_phaseledger_does_not_import_the_web_view() -> None:
    import subprocess
    import sys

    code = ("import sys, phaseledger, phaseledger.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'jinja2', 'uvicorn')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_cli_does_not_import_the_demo() -> None:
    found = [str(f) for path in modules_of("cli") for f in imports(path) if within(f.module, "phaseledger.demo")]
    assert found == []


def test_the_demo_uses_public_api_only() -> None:
    public_cli = set(phaseledger.cli.__all__)
    public_root = set(phaseledger.__all__)
    public_dispatch = set(phaseledger.testing.dispatchers.__all__)  # the demo's --on: every dispatcher, one interface
    wrong = []
    for path in modules_of("demo"):
        for found in imports(path):
            if not within(found.module, "phaseledger") or within(found.module, "phaseledger.demo"):
                continue
            allowed = (
                (found.module == "phaseledger" and found.name in public_root)
                or (found.module == "phaseledger.cli" and found.name in public_cli)
                or (found.module == "phaseledger.testing.dispatchers" and found.name in public_dispatch)
            )
            if not allowed:
                wrong.append(str(found))
    assert wrong == []


def test_no_private_names_of_other_packages() -> None:
    wrong = []
    for package in ("cli", "demo", "web"):
        for path in modules_of(package):
            for found in imports(path):
                if within(found.module, "phaseledger") and not within(found.module, f"phaseledger.{package}"):
                    if private_parts(found):
                        wrong.append(str(found))
    assert wrong == []


def test_the_import_reader_sees_imports_inside_functions() -> None:
    runner = PACKAGE / "demo" / "runner.py"
    names = {(f.module, f.name) for f in imports(runner)}
    assert ("phaseledger.cli", "print_history") in names  # imported inside a method
    assert ("phaseledger.demo.research", "build_research") in names


def test_the_cli_exports_are_sorted_and_exist() -> None:
    assert phaseledger.cli.__all__ == sorted(phaseledger.cli.__all__)
    for name in phaseledger.cli.__all__:
        assert getattr(phaseledger.cli, name) is not None
