"""Turning runs and events into text: rich tables on a terminal, plain aligned text in pipes.

Only presentation lives here (the report projections' tables are in ``_render_reports``);
the commands decide what to show. :mod:`phaseledger.cli` exports the few functions other
programs may use (the demo does).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from phaseledger.domain.status import CANCELLED, COMPLETED, DAMAGED, FAILED, RETRYING, RUNNING, SLEEPING, WAITING

if TYPE_CHECKING:
    from phaseledger.engine.views import RecordedEvent, Run

STATUS_STYLES = {
    RUNNING: "cyan",
    WAITING: "yellow",
    SLEEPING: "yellow",
    RETRYING: "yellow",
    COMPLETED: "green",
    FAILED: "red",
    CANCELLED: "magenta",
    DAMAGED: "bold red",
}


def table(console: Console, columns: Sequence[str], *, title: str | None = None) -> Table:
    """A table styled for the console: boxed headers on a terminal, bare columns otherwise."""
    styled = console.is_terminal
    return Table(
        *columns,
        title=title if styled else None,
        box=box.SIMPLE_HEAD if styled else None,
        show_edge=False,
        pad_edge=False,
        header_style="bold" if styled else "",
        title_justify="left",
    )


def emit(console: Console, renderable: Any) -> None:
    """Print a table; in plain (non-terminal) output without the padding at line ends."""
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def status_text(status: str) -> str:
    """A run status with its colour as console markup."""
    style = STATUS_STYLES.get(status, "")
    return f"[{style}]{status}[/]" if style else status


def compact(value: Any, limit: int = 80) -> str:
    """A value as one line of JSON, cut to ``limit`` characters."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    text = json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pretty(value: Any) -> str:
    """A value as indented JSON."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return json.dumps(value, default=str, indent=2, ensure_ascii=False)


def print_value(console: Console, value: Any) -> None:
    """Print a state or output as indented JSON (highlighted on a terminal)."""
    if console.is_terminal:
        from rich.json import JSON

        console.print(JSON(pretty(value)))
    else:
        console.print(pretty(value), markup=False, highlight=False, soft_wrap=True)


def when(moment: datetime | str | None) -> str:
    """A time as people read it everywhere in the command: ``2026-12-04 19:15:16 UTC``.

    Accepts a datetime (naive ones are taken as UTC) or an ISO 8601 string from event
    data; anything else is shown as it is.
    """
    if moment is None or moment == "":
        return "-"
    if isinstance(moment, str):
        try:
            parsed = datetime.fromisoformat(moment)
        except ValueError:
            return moment
        moment = parsed
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def token_counts(usage: dict[str, Any] | None) -> str:
    """``in/out`` tokens of a usage record, or an empty string."""
    if not usage:
        return ""
    return f"{usage.get('input_tokens', 0)}/{usage.get('output_tokens', 0)}"


def call_name(kind: str, name: str) -> str:
    """A journaled call's name for people: agent units' long operation names shortened.

    pydantic-ai names units ``<agent>__<operation>``; model requests read as
    ``planner: model request`` and tool calls as ``researcher: tool search``. Other names are
    kept as they are (``--json`` output always has the exact names).
    """
    agent, sep, operation = name.partition("__")
    if sep and kind == "model":
        return f"{agent}: model request"
    if sep and kind == "tool" and "call_tool:" in operation:
        return f"{agent}: tool {operation.rsplit('call_tool:', 1)[1]}"
    return name


def call_label(kind: str, name: str) -> str:
    """``step 'add'`` for plain calls, the shortened name for agent units."""
    short = call_name(kind, name)
    return short if short != name else f"{kind} {name!r}"


def event_summary(event: RecordedEvent) -> str:
    """What one event says, in one line of plain text."""
    d = event.data
    kind = event.type
    if kind == "RunStarted":
        parent = f" (forked from {d['parent']})" if d.get("parent") else ""
        return f"started {d.get('workflow')} v{d.get('workflow_version')} with {compact(d.get('input'), 60)}{parent}"
    if kind == "PhaseEntered":
        source = f" from {d['from_phase']}" if d.get("from_phase") else ""
        return f"entered {d.get('phase')}{source} ({d.get('reason')}, attempt {d.get('attempt')})"
    if kind == "StepRecorded":
        parts = [call_label(str(d.get("kind")), str(d.get("name")))]
        if d.get("usage"):
            parts.append(f"{token_counts(d['usage'])} tokens")
        if d.get("duration"):
            parts.append(f"{d['duration']:.3f}s")
        if d.get("error"):
            parts.append(f"recorded error {d['error'].get('type')}")
        elif d.get("kind") in ("step", "tool", "clock", "random", "signal"):
            parts.append(f"-> {compact(d.get('result'), 50)}")
        return "  ".join(parts)
    if kind == "StepAttemptFailed":
        retry = f", retry at {when(d['retry_at'])}" if d.get("retry_at") else ", not retried"
        return f"{d.get('name')!r} attempt {d.get('attempt')} failed: {d.get('error_type')}: {d.get('message')}{retry}"
    if kind == "SignalReceived":
        return f"signal {d.get('name')!r} {compact(d.get('payload'), 60)}"
    if kind == "TimerStarted":
        return f"timer set to wake at {when(d.get('wake_at'))}"
    if kind == "CheckpointSaved":
        return f"checkpoint {d.get('label')!r}"
    if kind == "RunSuspended":
        waits = []
        if d.get("signal"):
            waits.append(f"signal {d['signal']!r}")
        if d.get("until"):
            waits.append(f"until {when(d['until'])}")
        return f"suspended ({d.get('reason')}) waiting for {' or '.join(waits) or 'a wake-up'}"
    if kind == "RunResumed":
        return f"resumed ({d.get('reason')})"
    if kind == "RunCompleted":
        return f"completed with {compact(d.get('output'), 70)}"
    if kind == "RunFailed":
        error = d.get("error") or {}
        return f"failed: {error.get('type')}: {error.get('message')}"
    if kind == "RunCancelled":
        return f"cancelled: {d.get('reason')}"
    return compact(d, 100)


def history_table(console: Console, events: Iterable[RecordedEvent], *, title: str | None = None) -> Table:
    """A run's events as a timeline: version, seconds since the start, event, what it says."""
    grid = table(console, ["#", "at", "event", "what happened"], title=title)
    start: datetime | None = None
    phase = ""
    for event in events:
        start = start or event.timestamp
        offset = (event.timestamp - start).total_seconds()
        if event.type == "PhaseEntered":
            phase = str(event.data.get("phase"))
        style = {"RunFailed": "red", "RunCompleted": "green", "RunCancelled": "magenta",
                 "StepAttemptFailed": "yellow", "PhaseEntered": "bold"}.get(event.type, "")
        name = f"[{style}]{event.type}[/]" if style and console.is_terminal else event.type
        summary = escape(event_summary(event))
        if event.type in ("StepRecorded", "StepAttemptFailed", "CheckpointSaved", "TimerStarted") and phase:
            summary = f"[dim]{escape(phase)}:[/] {summary}" if console.is_terminal else f"{phase}: {summary}"
        grid.add_row(str(event.version), f"+{offset:.3f}s", name, summary)
    return grid


def print_history(console: Console, events: Iterable[RecordedEvent], *, title: str | None = None) -> None:
    """Print a run's events as a timeline (see :func:`history_table`)."""
    emit(console, history_table(console, events, title=title))


def runs_table(console: Console, runs: Sequence[Run]) -> Table:
    """One row per run: id, workflow, status, phase, steps, tokens, last update."""
    grid = table(console, ["run", "workflow", "status", "phase", "steps", "tokens", "updated", "driver"])
    for run in runs:
        grid.add_row(
            escape(run.run_id), f"{run.workflow}@{run.workflow_version}", status_text(run.status),
            run.phase or "-", str(run.steps), str(run.usage.total_tokens), when(run.updated_on),
            escape(driver_summary(run)),
        )
    return grid


def driver_summary(run: Run) -> str:
    """Who drives an unfinished run, in a few words: ``host:pid, 2 s ago`` or ``orphaned``."""
    if run.finished:
        return "-"
    lease = run.driving
    if lease is not None and lease.live:
        age = lease.heartbeat_age
        return f"{lease.host}:{lease.pid}" + (f", {age:.0f} s ago" if age is not None else "")
    return "orphaned" if run.status == RUNNING or lease is not None else "-"


def steps_table(console: Console, events: Sequence[RecordedEvent], *, limit: int = 40) -> tuple[Table, int]:
    """The recorded calls of a run (phase, sequence, kind, name, tokens, duration); returns the rows cut."""
    grid = table(console, ["phase", "seq", "kind", "name", "tokens", "seconds"])
    phase = ""
    rows: list[tuple[str, ...]] = []
    for event in events:
        if event.type == "PhaseEntered":
            phase = str(event.data.get("phase"))
        elif event.type == "StepRecorded":
            d = event.data
            kind, name = str(d.get("kind")), str(d.get("name"))
            rows.append((phase, str(d.get("seq")), kind, escape(call_name(kind, name)), token_counts(d.get("usage")),
                         f"{d.get('duration') or 0:.3f}"))
    cut = max(0, len(rows) - limit)
    for row in rows[cut:]:
        grid.add_row(*row)
    return grid, cut


def usage_lines(run: Run) -> list[str]:
    """The model usage of a run as ``label: value`` lines (empty when it made no model calls)."""
    usage = run.usage
    if not (usage.requests or usage.replayed_requests):
        return []
    lines = [
        f"model requests: {usage.requests}",
        f"tokens: {usage.input_tokens} in + {usage.output_tokens} out = {usage.total_tokens}",
    ]
    if usage.cost is not None:
        lines.append(f"cost: ${usage.cost:.4f}")
    if usage.replayed_requests:
        lines.append(
            f"replayed from the log: {usage.replayed_requests} requests, {usage.tokens_saved} tokens not paid again"
        )
    return lines


def run_summary_json(run: Run) -> dict[str, Any]:
    """What ``runs --json`` prints per run: the table's columns, not the state or output."""
    data = run.model_dump(mode="json", include={
        "run_id", "workflow", "workflow_version", "status", "phase", "steps", "created_on", "updated_on",
        "finished_on",
    })
    error = run.error or {}
    return {
        **data,
        "events": run.version,
        "total_tokens": run.usage.total_tokens,
        "cost": run.usage.cost,
        "error": f"{error.get('type')}: {error.get('message')}" if error else None,
        "driver_status": run.driver_status,
    }


def run_as_json(run: Run) -> dict[str, Any]:
    """A run view as JSON data, with the usage's derived totals."""
    data = run.model_dump(mode="json")
    data["usage"]["total_tokens"] = run.usage.total_tokens
    data["usage"]["tokens_saved"] = run.usage.tokens_saved
    data["driver_status"] = run.driver_status
    return data


def print_error(message: str) -> None:
    """Print an error as one line on stderr: ``error: ...`` (line breaks in the message folded)."""
    import sys

    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"error: {line}", file=sys.stderr)


def print_json(value: Any) -> None:
    """Print JSON for scripts (never styled, never wrapped)."""
    print(json.dumps(value, default=str, indent=2, ensure_ascii=False))


def print_comparison(console: Console, comparison: Any) -> None:
    """Print a :class:`~phaseledger.history.compare.RunComparison` side by side."""
    a, b = comparison.a, comparison.b
    grid = table(console, ["", escape(a.run_id), escape(b.run_id)], title=f"{comparison.workflow}: a vs b")
    grid.add_row("version", f"v{a.workflow_version}, {a.version} events", f"v{b.workflow_version}, {b.version} events")
    grid.add_row("status", status_text(a.status), status_text(b.status))
    grid.add_row("phase", a.phase or "-", b.phase or "-")
    grid.add_row("path", " > ".join(a.phase_path), " > ".join(b.phase_path))
    grid.add_row("calls", str(a.calls), str(b.calls))
    grid.add_row("tokens spent", str(a.spent_tokens), str(b.spent_tokens))
    if a.inherited_tokens or b.inherited_tokens:
        grid.add_row("tokens inherited", str(a.inherited_tokens), str(b.inherited_tokens))
    emit(console, grid)
    if comparison.common_ancestor:
        ancestor = comparison.common_ancestor
        run_id = escape(str(ancestor.get("run_id")))
        console.print(f"common ancestor: run {run_id} up to version {ancestor.get('version')}")
    if comparison.identical:
        console.print("identical: same path, same calls and results, same state and output")
        return
    if comparison.path_diverges_at is not None:
        console.print(f"phase paths part at phase #{comparison.path_diverges_at + 1}")
    split = comparison.calls_diverge_at
    if split is not None:
        def call(item: Any) -> str:
            if item is None:
                return "(no further call)"
            return f"{item.phase}: {item.kind} {item.name!r} -> {compact(item.error or item.result, 60)}"

        console.print(f"calls part at call #{split.index + 1}:")
        console.print(f"  a  {escape(call(split.a))}")
        console.print(f"  b  {escape(call(split.b))}")
    for label, found in (("state", comparison.state_differences), ("output", comparison.output_differences)):
        if found:
            diffs = table(console, [f"{label} path", "a", "b"])
            for d in found:
                diffs.add_row(escape(d.path), escape(compact(d.a, 60)), escape(compact(d.b, 60)))
            emit(console, diffs)
    console.print(f"tokens: b spent {comparison.tokens_delta:+d} compared with a")
