"""The docs cannot rot: every ```python block of README.md and docs/*.md is executed.

Each file's blocks run in order in one namespace (a module of its own, so pydantic models
defined in a block can be recorded and replayed), in a temporary directory, with a
timeout. A block whose fence says more than ``python`` (``python no-run``) is shown but
not run: use that sparingly, for code that needs a server or an API key.
Relative links between the docs must point to files that exist.
"""

from __future__ import annotations

import re
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
        source = "\n" * (block.line - 1) + block.code  # tracebacks show the doc's own line numbers
        code = compile(source, str(path), "exec")
        exec(code, module.__dict__)  # noqa: S102 - executing our own documentation is the point
