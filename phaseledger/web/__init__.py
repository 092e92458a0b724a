"""A web view of runs: server-rendered pages over a store and its report projections.

``create_app(store_or_engine)`` returns an ASGI application (Starlette) to serve with any
ASGI server or to mount inside a service of your own; ``phaseledger serve`` serves it
with uvicorn. Pages list runs (filters, paging, live refresh), show a run (its state
machine, timeline, tokens and cost, forks, artifacts, the state at any event and its
event history), compare two runs, and chart the reports. Actions (signal, cancel,
resume, retry, fork) are off unless an actions secret is given. See docs/web.md.

The view needs the ``web`` extra (``pip install 'phaseledger[web]'``); without it
:func:`create_app` raises :class:`WebUnavailable`, and importing phaseledger still works.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from phaseledger.web.errors import WebUnavailable

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from phaseledger.domain.workflow import Workflow
    from phaseledger.engine.engine import Engine
    from phaseledger.store.eventstore import Store

__all__ = ["ACTIONS_SECRET_ENV_VAR", "WebUnavailable", "create_app", "require_web"]

ACTIONS_SECRET_ENV_VAR = "PHASELEDGER_WEB_SECRET"
"""The environment variable ``phaseledger serve`` reads the actions secret from."""

_REQUIRED = {"starlette": "starlette", "jinja2": "jinja2", "python_multipart": "python-multipart"}
"""The modules the view imports, and the packages of the ``web`` extra that provide them."""


def require_web(*, server: bool = False) -> None:
    """Raise :class:`WebUnavailable` when a package of the ``web`` extra is missing (with ``server``: uvicorn too)."""
    for module, package in (*_REQUIRED.items(), *((("uvicorn", "uvicorn"),) if server else ())):
        try:
            importlib.import_module(module)
        except ImportError:
            raise WebUnavailable(package) from None


def create_app(
    store: Engine | Store | str | None = None,
    *,
    workflows: Iterable[Workflow[Any]] = (),
    actions_secret: str | None = None,
    title: str = "phaseledger",
    refresh_seconds: float = 5.0,
    page_size: int = 50,
    worker: bool = False,
) -> Starlette:
    """The web view of a store as an ASGI (Starlette) application.

    ``store`` is an :class:`~phaseledger.Engine` to share (its workflows drive actions and
    draw state machines), a :class:`~phaseledger.Store` or a store URL (an engine is made
    with ``workflows`` and closed when the app shuts down). Actions are enabled only with
    ``actions_secret`` (it signs the forms' CSRF tokens); without it the view is read-only
    and the action routes answer 403. ``refresh_seconds`` is how often open pages refresh
    their live parts (0: never); ``page_size`` is the default number of runs per page.
    ``worker=True`` also runs a worker of the engine while the app runs (it drives the
    runs the registered workflows may drive: signalled, due, new), so that what is done on
    the pages goes on without a worker process of its own.
    """
    require_web()
    from phaseledger.web.app import build_app

    return build_app(store, workflows=workflows, actions_secret=actions_secret, title=title,
                     refresh_seconds=refresh_seconds, page_size=page_size, worker=worker)
