"""The docs cannot rot: every ```python block of README.md and docs/*.md is executed.

Each file's blocks run in order in one namespace (a module of its own, so pydantic models
defined in a block can be recorded and replayed), in a temporary directory, with a
timeout. A block runs as the script a reader would save it as: its
``if __name__ == "__main__":`` part runs too. A block whose fence says more than
``python`` (``python no-run``) is shown but not run: use that sparingly, for code that
needs a server or an API key. Relative links between the docs must point to files that
exist, and the README's shell commands run as written.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its info string, first line number (1-based) and code."""

    info: str
    line: int
    code: str


def code_blocks(text: str) -> list[Block]:
    """Every fenced code block of a Markdown text, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = FENCE.match(lines[i])
        i += 1
        if not start:
            continue
        fence, indent, first, body = start["fence"], start["indent"], i, []
        while i < len(lines):
            end = FENCE.match(lines[i])
            if end and end["fence"][0] == fence[0] and len(end["fence"]) >= len(fence) and not end["info"].strip():
                break
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        blocks.append(Block(start["info"].strip(), first + 1, "\n".join(body)))
        i += 1
    return blocks


def runnable(blocks: list[Block]) -> list[Block]:
    """The blocks the suite executes: fence info exactly ``python`` (or ``py``)."""
    return [b for b in blocks if b.info in ("python", "py", "python3")]


class _RunAsScript(ast.NodeTransformer):
    """Make a module-level ``if __name__ == "__main__":`` true, as when the block is run as a script."""

    def visit_Module(self, node: ast.Module) -> ast.Module:
        for statement in node.body:
            if isinstance(statement, ast.If) and _is_main_guard(statement.test):
                statement.test = ast.copy_location(ast.Constant(True), statement.test)
        return node


def _is_main_guard(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def compile_as_script(block: Block, filename: str) -> types.CodeType:
    """A block's code, with the doc's own line numbers and its ``__main__`` part enabled."""
    source = "\n" * (block.line - 1) + block.code  # tracebacks show the doc's own line numbers
    tree = _RunAsScript().visit(ast.parse(source, filename))
    return compile(tree, filename, "exec")


def test_a_main_guard_runs_as_in_a_script() -> None:
    namespace: dict[str, object] = {"__name__": "docs_example"}
    block = Block("python", 1, 'ran = False\nif __name__ == "__main__":\n    ran = True')
    exec(compile_as_script(block, "x"), namespace)  # noqa: S102
    assert namespace["ran"] is True


def _doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_docs_exist_and_show_code() -> None:
    names = {p.name for p in DOCS}
    for required in ("README.md", "index.md", "getting-started.md", "concepts.md", "workflows.md", "cli.md",
                     "testing.md", "comparison.md"):
        assert required in names, f"{required} is missing"
    assert runnable(code_blocks((ROOT / "README.md").read_text())), "the README needs a runnable tour"


def test_fence_parsing() -> None:
    text = "intro\n```python\nx = 1\n```\n\n```python no-run\ny = 2\n```\n````md\n```python\nz\n```\n````\n"
    blocks = code_blocks(text)
    assert [(b.info, b.line, b.code) for b in blocks] == [
        ("python", 3, "x = 1"), ("python no-run", 7, "y = 2"), ("md", 10, "```python\nz\n```"),
    ]
    assert [b.code for b in runnable(blocks)] == ["x = 1"]


@pytest.mark.parametrize("path", DOCS, ids=_doc_id)
def test_links_point_to_files(path: Path) -> None:
    text = path.read_text()
    outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
    for match in LINK.finditer(outside_code):
        target = match["target"].split("#", 1)[0]
        if not target or re.match(r"^[a-z]+:", target):
            continue
        assert (path.parent / target).exists(), f"{_doc_id(path)} links to {target}, which does not exist"


DOCS_WITH_CODE = [path for path in DOCS if runnable(code_blocks(path.read_text()))]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", DOCS_WITH_CODE, ids=_doc_id)
def test_python_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = runnable(code_blocks(path.read_text()))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PHASELEDGER_STORE", raising=False)
    name = "docs_" + re.sub(r"\W", "_", path.stem)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    monkeypatch.setitem(sys.modules, name, module)
    for block in blocks:
        code = compile_as_script(block, str(path))
        exec(code, module.__dict__)  # noqa: S102 - executing our own documentation is the point


def _shell_words(line: str) -> list[str]:
    """A README shell line as a command: `python` is this interpreter, `phaseledger` this checkout's command."""
    words = shlex.split(line, comments=True)
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    assert words[0] == "phaseledger", line
    return [sys.executable, "-m", "phaseledger.cli", *words[1:]]


@pytest.mark.timeout(300)
def test_readme_tour_and_its_shell_commands_run_as_written(tmp_path: Path) -> None:
    """Save the tour as the README says, then run the README's commands one by one."""
    import phaseledger

    readme = (ROOT / "README.md").read_text()
    tour = runnable(code_blocks(readme))[0]
    assert "Save this as `tour.py`" in readme
    (tmp_path / "tour.py").write_text(tour.code + "\n")
    (commands,) = [b for b in code_blocks(readme) if b.info == "bash" and "python tour.py" in b.code]
    package_root = str(Path(phaseledger.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHASELEDGER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    outputs = []
    for line in filter(str.strip, commands.code.splitlines()):
        result = subprocess.run(_shell_words(line), cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=120, check=False)
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
        outputs.append(result.stdout)
    tour_output, shown, history, diagram = outputs
    assert "completed" in tour_output and "'event sourcing practice'" in tour_output
    assert "completed" in shown and "tour-1" in shown
    assert "RunCompleted" in history
    assert "stateDiagram-v2" in diagram and "review --> gather: [len(state.notes) < 2]" in diagram
    assert diagram.count("stateDiagram-v2") == 1 and "completed" not in diagram  # importing did not rerun the tour
