"""Finding the workflows a command, a worker or a crash harness child should register."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from phaseledger.domain.errors import UnknownWorkflow
from phaseledger.domain.workflow import Workflow


def load_workflows(spec: str) -> list[Workflow[Any]]:
    """Import ``spec`` and return the workflows it defines.

    ``spec`` is a module import path (``myapp.workflows``), ``module:attribute`` (a
    workflow, a list of them, or a function returning either) or ``path/to/file.py``
    (optionally ``:attribute``). Without an attribute, a module-level ``workflows`` list
    wins; otherwise every :class:`~phaseledger.Workflow` at module level is taken. Raises
    :class:`~phaseledger.UnknownWorkflow` saying what to fix.
    """
    module_path, attribute = _split(spec)
    module = _import(module_path, spec)
    if attribute:
        try:
            target: Any = getattr(module, attribute)
        except AttributeError:
            raise UnknownWorkflow(f"workflows module {module_path!r} has no attribute {attribute!r}") from None
        if callable(target) and not isinstance(target, Workflow):
            target = target()
        found = [target] if isinstance(target, Workflow) else list(target)
    elif isinstance(getattr(module, "workflows", None), (list, tuple)):
        found = list(module.workflows)
    else:
        found = [value for value in vars(module).values() if isinstance(value, Workflow)]
    bad = [item for item in found if not isinstance(item, Workflow)]
    if bad:
        raise UnknownWorkflow(f"{spec!r} lists {bad[0]!r}, which is not a phaseledger.Workflow")
    if not found:
        raise UnknownWorkflow(
            f"{spec!r} defines no workflows: define phaseledger.Workflow objects at module level, "
            "a `workflows` list, or name one with MODULE:ATTRIBUTE"
        )
    return found


def _split(spec: str) -> tuple[str, str]:
    module_path, sep, attribute = spec.rpartition(":")
    if not sep or not module_path or "/" in attribute or attribute.endswith(".py"):
        return spec, ""  # no attribute (a colon may belong to a Windows drive letter)
    return module_path, attribute


def _import(module_path: str, spec: str) -> Any:
    if module_path.endswith(".py"):
        path = Path(module_path).expanduser().resolve()
        if not path.is_file():
            raise UnknownWorkflow(f"workflows file {module_path!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise UnknownWorkflow(f"cannot load workflows file {module_path!r}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        if exc.name and module_path.startswith(exc.name):
            raise UnknownWorkflow(
                f"cannot import workflows module {spec!r}: no module named {exc.name!r} "
                "(check the import path and that it is on PYTHONPATH)"
            ) from None
        raise
