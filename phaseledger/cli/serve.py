"""``phaseledger serve``: the web view of the store (``phaseledger.web``), served by uvicorn.

The command needs the ``web`` extra; without it, it says which package is missing and
how to install it. Actions (signal, cancel, resume, retry, fork) are enabled only with
``--actions-secret`` or ``$PHASELEDGER_WEB_SECRET``.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from phaseledger.cli._base import app, session_of
from phaseledger.cli._session import CommandError, refuse_missing_store
from phaseledger.web import ACTIONS_SECRET_ENV_VAR


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, metavar="PORT",
                                      help="The port to listen on.")] = 8080,
    actions_secret: Annotated[Optional[str], typer.Option(
        "--actions-secret", envvar=ACTIONS_SECRET_ENV_VAR, metavar="SECRET", show_default=False,
        help="Enable actions (signal, cancel, resume, retry, fork); the secret signs their CSRF tokens. "
             "Without it the view is read-only.")] = None,
    worker: Annotated[bool, typer.Option(
        "--worker", help="Also drive runnable runs in this process (needs --workflows).")] = False,
    refresh: Annotated[float, typer.Option(
        "--refresh", min=0.0, metavar="SECONDS", help="How often open pages refresh their live parts (0: never).",
    )] = 5.0,
    root_path: Annotated[str, typer.Option(
        "--root-path", metavar="PATH", help="The path prefix a reverse proxy serves the view under.")] = "",
) -> None:
    """Serve a web view of the runs: lists, run pages, comparisons and reports.

    Read-only unless --actions-secret (or $PHASELEDGER_WEB_SECRET) is given. Load the
    workflows with --workflows to draw their state machines and to act on their runs.
    """
    from phaseledger.web import create_app, require_web

    require_web(server=True)
    import uvicorn

    session = session_of(ctx)
    refuse_missing_store(session.store)
    workflows = session.workflows()
    if worker and not workflows:
        raise CommandError("--worker needs the workflows it may drive: pass --workflows MODULE")
    web = create_app(session.store_url, workflows=workflows, actions_secret=actions_secret,
                     refresh_seconds=refresh, worker=worker)
    mode = "actions enabled" if actions_secret else "read-only"
    session.console.print(f"serving {web_url(host, port, root_path)} on {_redacted(session.store_url)} ({mode})")
    uvicorn.run(web, host=host, port=port, root_path=root_path, log_level="warning")


def web_url(host: str, port: int, root_path: str = "") -> str:
    """The address a browser opens."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{root_path.rstrip('/')}/"


def _redacted(url: str) -> str:
    from phaseledger.store.eventstore import StoreURL

    return StoreURL.parse(url).redacted
