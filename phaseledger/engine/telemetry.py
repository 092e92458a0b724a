"""OpenTelemetry spans of the work an engine does live: drives of runs, phase visits, journaled calls.

Off until :meth:`Engine.instrument <phaseledger.Engine.instrument>` switches it on. Then a
drive of a run is a span (``phaseledger run <workflow>``), each phase visit it drives is a
child span (``phaseledger phase <phase>``), and each journaled call that runs live — a step,
a model request, a tool call — is a span under the visit (``phaseledger <kind> <name>``),
all with the run's id, workflow, phase and call as attributes.

Replayed work is not traced again: a call served from the journal opens no span, so a
resumed run's trace shows only what really ran after the resume (its phase span says how
many recorded calls the visit had to replay). The phase span is the current span while the
handler runs, so the spans pydantic-ai makes for an instrumented agent (``invoke_agent``,
``chat``, ``execute_tool``; also only for work that runs live, see docs/agents.md) are its
children, in the same trace. Where the spans go is the tracer provider's business: give one
with the exporter you want (console, OTLP, ...) or let the global provider be used, which
``$PHASELEDGER_TRACING`` does for every engine (the ``phaseledger`` command's included).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from phaseledger.engine.stops import Cancelled, Released, Superseded, Suspended

if TYPE_CHECKING:
    from phaseledger.domain.run import WorkflowRun
    from phaseledger.domain.workflow import Workflow

TRACER_NAME = "phaseledger"
TRACING_ENV_VAR = "PHASELEDGER_TRACING"
"""Set (and not ``0``): every engine traces with the global tracer provider from the start."""
_OFF = contextlib.nullcontext()
"""What every span is while tracing is off (reusable, and as cheap as a ``with`` gets)."""
_STOPS = (Suspended, Released, Cancelled, Superseded)
"""How a drive stops without anything going wrong: not errors of a span."""


def tracing_from_env() -> bool:
    """Whether ``$PHASELEDGER_TRACING`` asks engines to trace (set, and not ``0``)."""
    import os

    return os.environ.get(TRACING_ENV_VAR, "") not in ("", "0")


def _version() -> str | None:
    """phaseledger's installed version, which the tracer carries (None when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("phaseledger")
    except PackageNotFoundError:
        return None


class Tracing:
    """The engine's spans, on a tracer of ``tracer_provider`` (the global one when None); off unless enabled."""

    def __init__(self, tracer_provider: Any = None, *, enabled: bool = False) -> None:
        self.tracer: Any = None
        if enabled:
            from opentelemetry import trace

            self.tracer = trace.get_tracer(TRACER_NAME, _version(), tracer_provider=tracer_provider)

    @property
    def enabled(self) -> bool:
        """Whether spans are made."""
        return self.tracer is not None

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any]) -> Iterator[Any]:
        """A span, current for the block (None when tracing is off).

        An exception other than the engine's own stops (a suspension, a release, a
        cancellation) is recorded on the span and marks it as an error.
        """
        if self.tracer is None:
            yield None
            return
        from opentelemetry.trace import Status, StatusCode

        with self.tracer.start_as_current_span(
            name, attributes={k: v for k, v in attributes.items() if v is not None},
            record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except _STOPS as stop:
                span.set_attribute("phaseledger.stopped", type(stop).__name__.lower())
                raise
            except BaseException as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise

    def run(self, run: WorkflowRun, workflow: Workflow[Any]) -> contextlib.AbstractContextManager[Any]:
        """The span of one drive of a run."""
        if self.tracer is None:
            return _OFF
        return self.span(f"phaseledger run {workflow.name}", {
            "phaseledger.run_id": run.id, "phaseledger.workflow": workflow.name,
            "phaseledger.workflow_version": workflow.version, "phaseledger.version": run.version,
        })

    def phase(self, run: WorkflowRun, replaying: int) -> contextlib.AbstractContextManager[Any]:
        """The span of one phase visit of a drive; ``replaying``: recorded calls it serves from the log."""
        if self.tracer is None:
            return _OFF
        return self.span(f"phaseledger phase {run.phase}", {
            "phaseledger.run_id": run.id, "phaseledger.workflow": run.workflow, "phaseledger.phase": run.phase,
            "phaseledger.attempt": run.attempts.get(run.phase or "", 1), "phaseledger.replayed_calls": replaying,
        })

    def call(self, run: WorkflowRun, kind: str, name: str, key: str) -> contextlib.AbstractContextManager[Any]:
        """The span of a journaled call that runs live (its attempts included)."""
        if self.tracer is None:
            return _OFF
        return self.span(f"phaseledger {kind} {name}", {
            "phaseledger.run_id": run.id, "phaseledger.phase": run.phase, "phaseledger.call.kind": kind,
            "phaseledger.call.name": name, "phaseledger.call.key": key, "phaseledger.call.seq": run.next_seq,
        })
