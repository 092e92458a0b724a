"""The web view's Starlette application: server-rendered pages over the store and its reports.

Pages: ``/runs`` (filters, paging, live refresh of ``/fragments/runs``), ``/runs/{id}``
(state machine, timeline, usage, forks, artifacts, state at any event, event history),
``/compare?a=&b=`` and ``/reports``. Listing runs reads the report tables only
(:meth:`Reports.runs_page <phaseledger.projections.Reports.runs_page>`), brought up to
date with the log first; a run's page folds that one run's log.

Actions (``POST /actions/{signal,cancel,resume,retry,fork}``) exist only when an actions
secret is configured; without one they answer 403 and the pages show no forms. Each
action checks a CSRF token (see :class:`~phaseledger.web.forms.Csrf`). Read handlers are
plain functions, which Starlette runs in its thread pool, so a slow store read never
blocks the event loop; actions are coroutines on the engine's async API, and ``resume``
and ``retry`` drive the run in a task of the server's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode, urlparse

from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from phaseledger.domain.diagram import Edge, StateDiagram
from phaseledger.domain.errors import InvalidInput, PhaseledgerError, RunNotFound
from phaseledger.domain.status import STATUSES
from phaseledger.domain.workflow import Workflow
from phaseledger.engine.engine import Engine
from phaseledger.engine.views import RecordedEvent
from phaseledger.history.timetravel import Lineage
from phaseledger.projections.models import FailureCount
from phaseledger.store.eventstore import Store
from phaseledger.web import markdown, svg
from phaseledger.web.details import RunDetails, call_name, run_details
from phaseledger.web.forms import CSRF_COOKIE, CSRF_FIELD, Csrf, parse_signal, signal_fields

log = logging.getLogger("phaseledger.web")

MAX_EVENTS_SHOWN = 1000
"""The event history table shows the last this many events of a run."""
MAX_PAGE_SIZE = 200


class WebView:
    """What the routes share: the engine, the templates, the options."""

    def __init__(self, engine: Engine, *, owns_engine: bool, actions_secret: str | None, title: str,
                 refresh_seconds: float, page_size: int) -> None:
        self.engine = engine
        self.owns_engine = owns_engine
        self.csrf = Csrf(actions_secret) if actions_secret else None
        self.title = title
        self.refresh_seconds = refresh_seconds
        self.page_size = page_size
        self.tasks: set[asyncio.Task[Any]] = set()
        self.env = Environment(loader=PackageLoader("phaseledger.web", "templates"),
                               autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
        self.env.globals.update(when=_when, seconds=_seconds, money=_money, pretty=_pretty, summary=event_summary)

    @property
    def actions(self) -> bool:
        """Whether actions are enabled (an actions secret is configured)."""
        return self.csrf is not None

    def render(self, request: Request, template: str, context: dict[str, Any], *, status: int = 200) -> HTMLResponse:
        """Render a page (with the shared context) and make sure the browser holds a CSRF nonce."""
        base = request.scope.get("root_path", "").rstrip("/")
        nonce = request.cookies.get(CSRF_COOKIE)
        fresh = None
        if self.csrf is not None and not nonce:
            nonce = fresh = Csrf.new_nonce()
        shared = {
            "base": base, "app_title": self.title, "store": self.engine.store.url.redacted, "actions": self.actions,
            "refresh": _refresh_text(self.refresh_seconds), "live": self.refresh_seconds > 0,
            "csrf_field": CSRF_FIELD, "csrf_token": self.csrf.token(nonce) if self.csrf and nonce else "",
            "run_url": lambda run_id: f"{base}/runs/{quote(run_id, safe='')}",
            "notice": request.query_params.get("notice"), "error": request.query_params.get("error"),
        }
        html = self.env.get_template(template).render({**shared, **context})
        response = HTMLResponse(html, status_code=status)
        if fresh is not None:
            response.set_cookie(CSRF_COOKIE, fresh, httponly=True, samesite="strict", path=base or "/")
        return response

    def error_page(self, request: Request, status: int, heading: str, message: str) -> HTMLResponse:
        """A page saying what went wrong."""
        return self.render(request, "error.html", {"title": heading, "heading": heading, "message": message,
                                                   "nav": ""}, status=status)


def _refresh_text(seconds: float) -> str:
    return f"{seconds:g}"


def _when(value: datetime | None, precise: bool = False) -> str:
    if value is None:
        return "–"
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if precise else value.strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _money(value: float | None) -> str:
    return "–" if value is None else f"${value:,.4f}"


def _pretty(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def event_summary(event: RecordedEvent) -> str:
    """One line saying what an event recorded."""
    data = event.data
    kind = event.type
    if kind == "RunStarted":
        parent = data.get("parent") or {}
        return f"{data.get('workflow')} v{data.get('workflow_version')}" + (
            f", forked from {parent.get('run_id')} at v{parent.get('version')}" if parent else "")
    if kind == "PhaseEntered":
        return f"→ {data.get('phase')} ({data.get('reason')}, attempt {data.get('attempt')})"
    if kind == "StepRecorded":
        extra = [f"{_seconds(event.duration)}" if event.duration else "",
                 f"{event.tokens} tokens" if event.tokens else "", "failed" if data.get("error") else ""]
        kind_, name = str(data.get("kind")), str(data.get("name"))
        short = call_name(kind_, name)
        return (short if short != name else f"{kind_} {name}") + (
            f" ({', '.join(e for e in extra if e)})" if any(extra) else "")
    if kind == "StepAttemptFailed":
        return (f"{data.get('name')} attempt {data.get('attempt')}: {data.get('error_type')}: "
                f"{str(data.get('message'))[:120]}")
    if kind == "SignalReceived":
        return f"signal {data.get('name')}"
    if kind == "RunSuspended":
        what = f"signal {data.get('signal')!r}" if data.get("signal") else data.get("reason")
        return f"waits for {what}" + (f" until {data.get('until')}" if data.get("until") else "")
    if kind == "RunResumed":
        return f"resumed ({data.get('reason')})"
    if kind == "TimerStarted":
        return f"timer until {data.get('wake_at')}"
    if kind == "CheckpointSaved":
        return f"checkpoint {data.get('label')!r}"
    if kind == "RunFailed":
        error = data.get("error") or {}
        return f"{error.get('type')}: {str(error.get('message'))[:160]}"
    if kind == "RunCancelled":
        return f"cancelled: {data.get('reason')}"
    if kind == "RunCompleted":
        return "completed"
    return ""


# -- helpers of the pages ------------------------------------------------------------------


class RunFilters:
    """The runs list's filters, read from the query string (bad values are ignored, not errors)."""

    def __init__(self, params: Any, default_size: int) -> None:
        self.q = (params.get("q") or "").strip() or None
        self.workflow = params.get("workflow") or None
        status = params.get("status") or None
        self.status = status if status in (*STATUSES, "damaged") else None
        self.phase = (params.get("phase") or "").strip() or None
        self.since = _parse_time(params.get("since"))
        self.until = _parse_time(params.get("until"), end=True)
        self.since_text = self.since.strftime("%Y-%m-%dT%H:%M") if self.since else ""
        self.until_text = self.until.strftime("%Y-%m-%dT%H:%M") if self.until else ""
        self.size = min(max(_int(params.get("size"), default_size), 1), MAX_PAGE_SIZE)
        self.page = max(_int(params.get("page"), 1), 1)

    def query(self, **changes: Any) -> str:
        """The query string of these filters, with ``changes`` applied."""
        items = {"q": self.q, "workflow": self.workflow, "status": self.status, "phase": self.phase,
                 "since": self.since_text, "until": self.until_text, "size": self.size, "page": self.page}
        items.update(changes)
        return urlencode({k: v for k, v in items.items() if v not in (None, "")})


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _parse_time(text: str | None, *, end: bool = False) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    if end and len(text) <= 16:  # a minute (datetime-local): include the whole of it
        value = value.replace(second=59, microsecond=999999)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _observed_diagram(details: RunDetails) -> StateDiagram:
    """A diagram of the phases and transitions a run took (its workflow is not registered here)."""
    phases: list[str] = []
    for visit in details.visits:
        if visit.phase not in phases:
            phases.append(visit.phase)
    if not phases:
        phases = [details.run.phase or "?"]
    edges = tuple(Edge(source, target) for source, target in details.taken)
    finals = (details.run.phase,) if details.run.finished and details.run.phase else ()
    return StateDiagram(title=f"{details.run.workflow} v{details.run.workflow_version}", initial=phases[0],
                        phases=tuple(phases), finals=tuple(p for p in finals if p), edges=edges)


def _forks_tree(lineage: Lineage, base: str) -> str:
    """The forks of a run as nested lists (HTML, every id escaped), each with a link comparing it to its parent."""
    children: dict[str, list[Any]] = {}
    for fork in lineage.descendants:
        children.setdefault(fork.parent_run_id, []).append(fork)

    def branch(run_id: str) -> str:
        items = []
        for fork in children.get(run_id, []):
            link = f'<a href="{base}/runs/{quote(fork.run_id, safe="")}">{escape(fork.run_id)}</a>'
            query = escape(urlencode({"a": run_id, "b": fork.run_id}))
            compare = f' · <a href="{base}/compare?{query}">compare with its parent</a>'
            at = f'<span class="muted">at v{fork.version}</span>'
            items.append(f"<li>{link} {at}{compare}{branch(fork.run_id)}</li>")
        return f'<ul class="tree">{"".join(items)}</ul>' if items else ""

    return branch(lineage.run_id)


def _artifact_html(content: Any, fmt: str) -> str:
    if fmt == "markdown" and isinstance(content, str):
        return markdown.render(content)
    if fmt == "table" and isinstance(content, list):
        return markdown.table_artifact(content)
    return f"<pre>{escape(_pretty(content))}</pre>"


# -- the application -----------------------------------------------------------------------


def build_app(source: Engine | Store | str | None = None, *, workflows: Iterable[Workflow[Any]] = (),
              actions_secret: str | None = None, title: str = "phaseledger", refresh_seconds: float = 5.0,
              page_size: int = 50, worker: bool = False, debug: bool = False) -> Starlette:
    """The web view as a Starlette app; see :func:`phaseledger.web.create_app`."""
    if isinstance(source, Engine):
        engine, owns = source, False
        for workflow in workflows:
            if workflow.key not in engine.registry.workflows:
                engine.register(workflow)
    else:
        engine, owns = Engine(source, workflows=workflows), True
    view = WebView(engine, owns_engine=owns, actions_secret=actions_secret or None, title=title,
                   refresh_seconds=refresh_seconds, page_size=page_size)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runner = engine.worker(poll_interval=0.2) if worker else None
        if runner is not None:
            _spawn(view, runner.run(handle_signals=False), "the web view's worker")
        try:
            yield
        finally:
            if runner is not None:
                runner.stop()
            for task in list(view.tasks):
                task.cancel()
            if view.tasks:
                await asyncio.gather(*view.tasks, return_exceptions=True)
            if view.owns_engine:
                await engine.drives.stop_all()
                engine.close()

    routes = [
        Route("/", lambda request: RedirectResponse(f"{request.scope.get('root_path', '')}/runs")),
        Route("/runs", lambda request: runs_page(view, request)),
        Route("/fragments/runs", lambda request: runs_page(view, request, fragment=True)),
        Route("/runs/{run_id:path}", lambda request: run_page(view, request)),
        Route("/fragments/run", lambda request: run_fragment(view, request)),
        Route("/compare", lambda request: compare_page(view, request)),
        Route("/reports", lambda request: reports_page(view, request)),
        Route("/actions/{action}", _action_endpoint(view), methods=["POST"]),
        Mount("/static", app=StaticFiles(packages=[("phaseledger.web", "static")]), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, debug=debug)
    app.state.phaseledger = view
    return app


# Starlette runs these plain functions in its thread pool (store reads block).

def runs_page(view: WebView, request: Request, *, fragment: bool = False) -> Response:
    """The runs list (or just its table, for the live refresh)."""
    reports = view.engine.reports
    filters = RunFilters(request.query_params, view.page_size)
    reports.catch_up()
    page = reports.runs_page(status=filters.status, workflow=filters.workflow, phase=filters.phase,
                             since=filters.since, until=filters.until, run_id_contains=filters.q,
                             limit=filters.size, offset=(filters.page - 1) * filters.size)
    pages = max(math.ceil(page.total / filters.size), 1)
    base = request.scope.get("root_path", "").rstrip("/")
    context = {
        "title": "Runs", "nav": "runs", "page": page, "f": filters, "page_no": filters.page, "pages": pages,
        "prev_url": f"{base}/runs?{filters.query(page=filters.page - 1)}" if filters.page > 1 else None,
        "next_url": f"{base}/runs?{filters.query(page=filters.page + 1)}" if filters.page < pages else None,
        "query": filters.query(), "lag": 0,
    }
    if fragment:
        return view.render(request, "_runs_table.html", context)
    registered = {w.name for w in view.engine.registry.workflows.values()}
    context["workflows"] = sorted(set(reports.workflows()) | registered)
    context["statuses"] = list(STATUSES)
    return view.render(request, "runs.html", context)


def _details_or_404(view: WebView, request: Request, run_id: str) -> RunDetails | HTMLResponse:
    try:
        return run_details(view.engine, run_id)
    except RunNotFound:
        return view.error_page(request, 404, "Run not found", f"There is no run {run_id!r} in this store.")
    except PhaseledgerError as exc:
        return view.error_page(request, 400, "Cannot show this run", str(exc))


def _driver_text(details: RunDetails) -> str | None:
    run = details.run
    if run.finished:
        return None
    if run.driving is not None:
        return run.driving.describe()
    return run.driver_status


def run_page(view: WebView, request: Request) -> Response:
    """A run: summary, state machine, actions, timeline, usage, forks, artifacts, state, events."""
    run_id = request.path_params["run_id"]
    details = _details_or_404(view, request, run_id)
    if isinstance(details, HTMLResponse):
        return details
    run = details.run
    at = None
    at_version = _int(request.query_params.get("at"), 0)
    at_error = None
    if at_version:
        try:
            at = view.engine.state_at(run_id, at_version)
        except PhaseledgerError as exc:
            at_error = str(exc)
    if details.workflow is not None:
        diagram = StateDiagram.of(details.workflow)
    else:
        diagram = _observed_diagram(details)
    current = run.phase if run.phase in diagram.phases else None
    base = request.scope.get("root_path", "").rstrip("/")
    signal_forms = []
    checkpoints: list[Any] = []
    if view.actions:
        declared = dict(details.workflow.signals) if details.workflow is not None else {}
        if details.waiting_signal and details.waiting_signal not in declared:
            declared = {details.waiting_signal: None, **declared}
        names = sorted(declared, key=lambda n: (n != details.waiting_signal, n))
        signal_forms = [{"name": name, "fields": signal_fields(declared[name]), "prefix": f"s{i}-"}
                        for i, name in enumerate(names)]
        if details.workflow is not None:
            with contextlib.suppress(PhaseledgerError):
                checkpoints = view.engine.checkpoints(run_id)
    events = details.events[-MAX_EVENTS_SHOWN:]
    context = {
        "title": f"Run {run_id}", "nav": "runs", "run": run, "d": details, "driver": _driver_text(details),
        "diagram": svg.state_machine(diagram, visited=details.visited, current=current, taken=details.taken),
        "timeline": svg.timeline(details.bars()),
        "artifacts": [{"name": a.name, "phase": a.phase, "version": a.version,
                       "html": _artifact_html(a.content, a.format)} for a in details.artifacts],
        "forks_tree": _forks_tree(details.lineage, escape(base)) if details.lineage else "",
        "at": at, "events": events, "events_cut": len(events) < len(details.events),
        "signal_forms": signal_forms, "checkpoints": checkpoints,
    }
    if at_error:
        context["error"] = at_error
    return view.render(request, "run.html", context)


def run_fragment(view: WebView, request: Request) -> Response:
    """A run's summary table alone (the run page refreshes it while the run is unfinished)."""
    run_id = request.query_params.get("id") or ""
    details = _details_or_404(view, request, run_id)
    if isinstance(details, HTMLResponse):
        return details
    return view.render(request, "_run_status.html", {"run": details.run, "d": details,
                                                     "driver": _driver_text(details)})


def compare_page(view: WebView, request: Request) -> Response:
    """Two runs side by side: paths, first different call, state and output differences, tokens."""
    a, b = request.query_params.get("a"), request.query_params.get("b")
    context: dict[str, Any] = {"title": "Compare", "nav": "compare", "a": a, "b": b, "c": None}
    if a and b:
        try:
            context["c"] = view.engine.compare(a, b)
        except PhaseledgerError as exc:
            context["error"] = str(exc)
            return view.render(request, "compare.html", context, status=404 if isinstance(exc, RunNotFound) else 400)
    return view.render(request, "compare.html", context)


def reports_page(view: WebView, request: Request) -> Response:
    """Token usage by day and model, failures by phase and error type, phase durations."""
    reports = view.engine.reports
    reports.catch_up()
    summary = reports.summary()
    usage = reports.token_usage()
    failures = reports.failure_counts()
    by_day_model: dict[str, int] = {}
    for row in usage:
        key = f"{row.day} · {row.model}"
        by_day_model[key] = by_day_model.get(key, 0) + row.input_tokens + row.output_tokens
    tokens_chart = svg.bar_chart([(k, float(v), f"{v:,} tokens") for k, v in by_day_model.items()],
                                 title="Tokens by day and model")
    failures_chart = svg.bar_chart([_failure_bar(f) for f in failures[:30]], title="Failures by phase and error type")
    timed = [p for p in summary.phases if p.mean_seconds is not None]
    durations_chart = svg.bar_chart(
        [(f"{p.workflow} · {p.phase}", float(p.mean_seconds or 0.0), f"mean {_seconds(p.mean_seconds)}")
         for p in timed], title="Mean phase duration")
    return view.render(request, "reports.html", {
        "title": "Reports", "nav": "reports", "summary": summary, "usage": usage, "failures": failures,
        "tokens_chart": tokens_chart, "failures_chart": failures_chart, "durations_chart": durations_chart,
        "lag": summary.lag,
    })


def _failure_bar(failure: FailureCount) -> tuple[str, float, str]:
    what = "run" if failure.kind == "run" else "attempt"
    count = failure.count
    return f"{failure.phase or '–'} · {failure.error_type}", float(count), f"{count} {what}{'' if count == 1 else 's'}"


# -- actions -------------------------------------------------------------------------------

ACTIONS = ("signal", "cancel", "resume", "retry", "fork", "resolve")


def _same_origin(request: Request) -> bool:
    """False when the request's Origin (or Referer) names another host than the one it was sent to."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin != "null"
    return urlparse(origin).netloc == request.headers.get("host", "")


def _action_endpoint(view: WebView) -> Any:
    async def endpoint(request: Request) -> Response:
        action = request.path_params["action"]
        if view.csrf is None:
            return Response("actions are disabled: start the web view with an actions secret "
                            "(phaseledger serve --actions-secret, or $PHASELEDGER_WEB_SECRET)", status_code=403,
                            media_type="text/plain")
        if action not in ACTIONS:
            return Response(f"no action {action!r}", status_code=404, media_type="text/plain")
        form = await request.form()
        token = form.get(CSRF_FIELD)
        if not _same_origin(request) or not view.csrf.valid(request.cookies.get(CSRF_COOKIE),
                                                            token if isinstance(token, str) else None):
            return Response("the form's CSRF token is missing or wrong: reload the page and submit again",
                            status_code=403, media_type="text/plain")
        run_id = str(form.get("run_id") or "")
        base = request.scope.get("root_path", "").rstrip("/")
        target = run_id
        try:
            notice, target = await _act(view, action, run_id, {k: v for k, v in form.items() if isinstance(v, str)})
        except PhaseledgerError as exc:
            return RedirectResponse(f"{base}/runs/{quote(run_id, safe='')}?{urlencode({'error': str(exc)})}",
                                    status_code=303)
        return RedirectResponse(f"{base}/runs/{quote(target, safe='')}?{urlencode({'notice': notice})}",
                                status_code=303)

    return endpoint


async def _act(view: WebView, action: str, run_id: str, form: dict[str, str]) -> tuple[str, str]:
    """Do an action; return the notice to show and the run whose page to show it on."""
    engine = view.engine
    if action == "signal":
        name = form.get("signal") or ""
        run = await engine.get_async(run_id)
        workflow = engine.registry.workflows.get((run.workflow, run.workflow_version))
        model = workflow.signals.get(name) if workflow is not None else None
        await engine.signal(run_id, name, parse_signal(model, form))
        return f"signal {name!r} sent", run_id
    if action == "cancel":
        await engine.cancel(run_id, form.get("reason") or "cancelled from the web view")
        return "run cancelled", run_id
    if action == "resolve":  # a person's decision on an effect in doubt (policy "ask")
        happened = form.get("happened") == "yes"
        result = _json_field(form.get("result") or "", "the result") if happened else None
        await engine.resolve(run_id, happened=happened, result=result, key=form.get("key") or None)
        _spawn(view, engine.resume(run_id), f"resume of run {run_id!r} after a decision")
        await asyncio.sleep(0.05)
        what = "happened: its result is recorded" if happened else "did not happen: the step runs again, same key"
        return f"decision sent (the effect {what}); the run is driven by this server", run_id
    if action in ("resume", "retry"):
        run = await engine.get_async(run_id)  # RunNotFound before a task is started
        if action == "retry" and run.status != "failed":
            raise PhaseledgerError(f"run {run_id!r} is {run.status}, not failed: only a failed run can be retried")
        if run.finished and action == "resume":
            raise PhaseledgerError(f"run {run_id!r} is {run.status}: a finished run does not resume")
        drive = engine.resume(run_id) if action == "resume" else engine.retry(run_id)
        _spawn(view, drive, f"{action} of run {run_id!r}")
        await asyncio.sleep(0.05)  # let a short drive show its first events on the page it redirects to
        return f"{action} started: the run is driven by this server", run_id
    at = form.get("at") or None
    fork = await engine.fork(run_id, at=at, new_run_id=form.get("new_run_id") or None, drive=False)
    return f"forked from {run_id} at {at or 'the head'}: resume it to drive it", fork.run_id


def _json_field(text: str, what: str) -> Any:
    """A form field holding JSON (empty: None); :class:`InvalidInput` naming ``what`` when it is not JSON."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not JSON ({exc.msg} at position {exc.pos}): write it as JSON, "
                           'e.g. "ch_123" or {"id": "ch_123"}') from None


def _spawn(view: WebView, coro: Any, what: str) -> None:
    """Run ``coro`` in the background; log its failure (the run's page shows the outcome)."""
    task = asyncio.get_running_loop().create_task(coro)
    view.tasks.add(task)

    def done(finished: asyncio.Task[Any]) -> None:
        view.tasks.discard(finished)
        if not finished.cancelled() and finished.exception() is not None:
            log.warning("%s ended with %s", what, finished.exception())

    task.add_done_callback(done)
