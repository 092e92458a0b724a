"""Turning the report projections into text: their status, the summary report, a progress bar.

The tables keep their titles in plain output too (``report projection``, ``runs by
status``...): scripts and people read the report by them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console, JustifyMethod
from rich.table import Table

if TYPE_CHECKING:
    from phaseledger.projections.models import ProjectionStatus, SummaryReport

OnProgress = Callable[[int, int], None]
"""Called with (events applied, events to apply) as a catch-up or rebuild goes."""


def status_table(state: ProjectionStatus) -> Table:
    """Where the report tables stand: store, position, lag, generation, layout, row counts."""
    table = Table(title="report projection", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("store", state.store)
    table.add_row("position", "none (empty)" if state.position is None else str(state.position))
    table.add_row("lag", f"{state.lag} event(s) behind" if state.lag else "up to date")
    table.add_row("generation", str(state.generation))
    layout = f"v{state.schema_version}"
    if state.outdated:
        layout += f" (outdated: this version uses v{state.expected_schema_version}; run `projections rebuild`)"
    table.add_row("layout", layout)
    for name, count in state.rows.items():
        table.add_row(name, f"{count} row(s)")
    return table


def summary_tables(summary: SummaryReport) -> list[Table]:
    """The summary report: runs by status, phase durations, tokens and cost, and the lag if any."""
    runs = Table(title="runs by status")
    runs.add_column("status")
    runs.add_column("runs", justify="right")
    for status_name, count in summary.runs_by_status.items():
        runs.add_row(status_name, str(count))
    runs.add_row("total", str(sum(summary.runs_by_status.values())))

    phases = Table(title="phase durations (finished visits)")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("workflow", "left"), ("phase", "left"), ("visits", "right"), ("mean s", "right"), ("max s", "right"),
        ("total s", "right"))
    for name, justify in columns:
        phases.add_column(name, justify=justify)
    for p in summary.phases:
        phases.add_row(p.workflow, p.phase, str(p.visits), _seconds(p.mean_seconds), _seconds(p.max_seconds),
                       _seconds(p.total_seconds))

    usage = Table(title="tokens and cost by workflow")
    for name in ("workflow", "runs", "requests", "input tokens", "output tokens", "cost"):
        usage.add_column(name, justify="left" if name == "workflow" else "right")
    for w in summary.workflows:
        usage.add_row(w.workflow, str(w.runs), str(w.model_requests), str(w.input_tokens), str(w.output_tokens),
                      "-" if w.cost is None else f"{w.cost:.4f}")
    tables = [runs, phases, usage]
    if summary.lag:
        note = Table(show_header=False, box=None)
        note.add_row(f"{summary.lag} event(s) not included yet (run `phaseledger projections catch-up`)")
        tables.append(note)
    return tables


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def with_progress(console: Console, label: str, work: Callable[[OnProgress | None], int], *, show: bool) -> int:
    """Run ``work`` (a catch-up or rebuild) with a progress bar on a terminal when ``show``;
    returns the events it applied."""
    if not show or not console.is_terminal:
        return int(work(None))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return int(work(progress))
