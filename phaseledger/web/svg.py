"""Inline SVG drawn on the server: the state machine, the run's timeline and bar charts.

Nothing here needs Graphviz or a browser library: each function lays its picture out
itself and returns SVG text (every label escaped), which the pages embed as it is.

The state machine is laid out in columns: a phase's column is its distance from the
initial phase (breadth first), so forward edges run left to right and an edge back to an
earlier (or the same) column is drawn as an arc under the boxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from phaseledger.domain.diagram import StateDiagram

NODE_W, NODE_H = 128, 38
COL_GAP, ROW_GAP = 132, 30
MARGIN = 24


def _text(x: float, y: float, text: str, cls: str = "", anchor: str = "middle") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{klass}>{escape(text)}</text>'


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def state_machine(diagram: StateDiagram, *, visited: Mapping[str, int] | None = None,
                  current: str | None = None, taken: Mapping[tuple[str, str], int] | None = None) -> str:
    """The workflow's state machine: phases ``visited`` (name -> visits) filled, ``current``
    outlined, and each edge ``taken`` labelled with how many times the run took it."""
    visited, taken = visited or {}, taken or {}
    rank = {diagram.initial: 0}
    frontier = [diagram.initial]
    while frontier:
        following = []
        for phase in frontier:
            for edge in diagram.edges:
                if edge.source == phase and edge.target not in rank:
                    rank[edge.target] = rank[phase] + 1
                    following.append(edge.target)
        frontier = following
    last = max(rank.values(), default=0)
    for phase in diagram.phases:  # unreachable phases (validate() forbids them) go last
        rank.setdefault(phase, last + 1)
    columns: dict[int, list[str]] = {}
    for phase in diagram.phases:
        columns.setdefault(rank[phase], []).append(phase)
    rows = max(len(c) for c in columns.values())
    start_w = 30
    pos: dict[str, tuple[float, float]] = {}
    for col, phases in columns.items():
        offset = (rows - len(phases)) * (NODE_H + ROW_GAP) / 2
        for row, phase in enumerate(phases):
            pos[phase] = (MARGIN + start_w + col * (NODE_W + COL_GAP),
                          MARGIN + 18 + offset + row * (NODE_H + ROW_GAP))
    back = [e for e in diagram.edges if rank[e.target] <= rank[e.source] and e.source != e.target]
    width = MARGIN * 2 + start_w + (max(columns) + 1) * (NODE_W + COL_GAP) - COL_GAP
    bottom = MARGIN + 18 + rows * (NODE_H + ROW_GAP) - ROW_GAP
    height = bottom + MARGIN + (28 + 16 * len(back) if back else 0)
    parts = [
        (f'<svg class="diagram" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
         f'width="{width:.0f}" height="{height:.0f}" role="img" aria-labelledby="diagram-title">'),
        (f'<title id="diagram-title">State machine of {escape(diagram.title)}'
         f'{f", current phase {escape(current)}" if current else ""}</title>'),
        ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
         'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker>'
         '<marker id="arrow-taken" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
         'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead taken"/></marker></defs>'),
    ]
    ix, iy = pos[diagram.initial]
    parts.append(f'<circle cx="{MARGIN + 6}" cy="{iy + NODE_H / 2:.1f}" r="6" class="start"/>')
    parts.append(f'<path d="M{MARGIN + 12},{iy + NODE_H / 2:.1f} L{ix - 2:.1f},{iy + NODE_H / 2:.1f}" '
                 f'class="edge" marker-end="url(#arrow)"/>')
    back_index = 0
    for edge in diagram.edges:
        count = taken.get((edge.source, edge.target), 0)
        cls = "edge taken" if count else "edge"
        marker = "url(#arrow-taken)" if count else "url(#arrow)"
        sx, sy = pos[edge.source]
        tx, ty = pos[edge.target]
        label = " ".join(filter(None, [_short(edge.label, 28), f"×{count}" if count else ""]))
        if edge.source == edge.target:
            cx = sx + NODE_W / 2
            d = (f"M{cx - 14:.1f},{sy:.1f} C{cx - 30:.1f},{sy - 34:.1f} "
                 f"{cx + 30:.1f},{sy - 34:.1f} {cx + 14:.1f},{sy:.1f}")
            lx, ly = cx, sy - 30
        elif rank[edge.target] > rank[edge.source]:
            x1, y1, x2, y2 = sx + NODE_W, sy + NODE_H / 2, tx, ty + NODE_H / 2
            mid = (x1 + x2) / 2
            d = f"M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2 - 2:.1f},{y2:.1f}"
            lx, ly = mid, (y1 + y2) / 2 - 6
        else:
            back_index += 1
            depth = bottom + 14 + 16 * back_index
            x1, x2 = sx + NODE_W / 2 + 10, tx + NODE_W / 2 - 10
            d = (f"M{x1:.1f},{sy + NODE_H:.1f} C{x1:.1f},{depth:.1f} {x2:.1f},{depth:.1f} "
                 f"{x2:.1f},{ty + NODE_H + 2:.1f}")
            lx, ly = (x1 + x2) / 2, depth - 4
        title = f"{edge.source} → {edge.target}" + (f" {edge.label}" if edge.label else "") + (
            f", taken {count} time(s)" if count else "")
        parts.append(f'<g><title>{escape(title)}</title><path d="{d}" class="{cls}" fill="none" '
                     f'marker-end="{marker}"/>')
        if label:
            parts.append(_text(lx, ly, label, "edge-label taken" if count else "edge-label"))
        parts.append("</g>")
    for phase in diagram.phases:
        x, y = pos[phase]
        classes = ["phase"]
        if phase in visited:
            classes.append("visited")
        if phase == current:
            classes.append("current")
        if phase in diagram.finals:
            classes.append("final")
        visits = visited.get(phase, 0)
        title = phase + (f": visited {visits} time(s)" if visits else ": not visited") + (
            " (current)" if phase == current else "") + (" (final)" if phase in diagram.finals else "")
        parts.append(f'<g class="{" ".join(classes)}"><title>{escape(title)}</title>'
                     f'<rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="9"/>')
        if phase in diagram.finals:
            parts.append(f'<rect x="{x + 3:.1f}" y="{y + 3:.1f}" width="{NODE_W - 6}" height="{NODE_H - 6}" '
                         f'rx="7" class="inner"/>')
        parts.append(_text(x + NODE_W / 2, y + NODE_H / 2 + 4.5, _short(phase, 18), "phase-name"))
        if visits > 1:
            parts.append(f'<circle cx="{x + NODE_W - 2:.1f}" cy="{y + 2:.1f}" r="9" class="badge"/>')
            parts.append(_text(x + NODE_W - 2, y + 6, str(visits), "badge-text"))
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class Bar:
    """One row of a timeline: a labelled span of time, drawn in the colour of its kind."""

    label: str
    start: datetime
    end: datetime
    kind: str
    """phase, wait, step, model, tool, agent, signal, timer, clock, random, checkpoint, artifact."""
    detail: str = ""
    """Shown on hover (the duration, tokens, ...)."""
    indent: bool = False
    """Drawn under the row before (a call within a phase visit)."""
    open: bool = False
    """Still going (the current phase visit, an unanswered wait)."""


def _duration(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def timeline(bars: Sequence[Bar], *, width: int = 1100) -> str:
    """A Gantt chart of ``bars``, one row each, on one time axis (durations written beside the bars).

    The axis spans the closed bars; an open bar (a wait still going, the current phase
    visit) runs on to the right edge, past the last event, and says how long it has lasted.
    """
    if not bars:
        return '<p class="muted">Nothing to draw yet.</p>'
    start = min(b.start for b in bars)
    end = max((b.end for b in bars if not b.open), default=max(b.start for b in bars))
    end = max(end, max(b.start for b in bars))
    span = max((end - start).total_seconds(), 1e-3)
    label_w, right = 270, 100
    plot = width - label_w - right
    tail = 0.1 * plot if any(b.open for b in bars) else 0.0
    row_h = 22
    height = 28 + row_h * len(bars) + 8

    def x(when: datetime) -> float:
        return label_w + (plot - tail) * min((when - start).total_seconds() / span, 1.0)

    parts = [(f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
              f'width="{width}" height="{height}" role="img" aria-labelledby="timeline-title">'),
             f'<title id="timeline-title">Timeline: {len(bars)} rows over {_duration(span)}</title>']
    for i in range(5):
        gx = label_w + (plot - tail) * i / 4
        parts.append(f'<line x1="{gx:.1f}" y1="18" x2="{gx:.1f}" y2="{height - 6}" class="grid"/>')
        parts.append(_text(gx, 12, "+" + _duration(span * i / 4) if i else "0", "axis"))
    for i, bar in enumerate(bars):
        y = 26 + i * row_h
        seconds = max((bar.end - bar.start).total_seconds(), 0.0)
        x1 = x(bar.start)
        x2 = label_w + plot if bar.open else x(bar.end)
        w = max(x2 - x1, 2.0)
        label = ("   " if bar.indent else "") + _short(bar.label, 40 if bar.indent else 42)
        text = (_duration(seconds) + " so far") if bar.open else _duration(seconds)
        tip = f"{bar.label}: {text}" + (f" — {bar.detail}" if bar.detail else "")
        parts.append(f'<g class="bar {escape(bar.kind)}{" open" if bar.open else ""}"><title>{escape(tip)}</title>')
        parts.append(_text(label_w - 8, y + 13, label, "row-label" + (" indent" if bar.indent else ""), "end"))
        parts.append(f'<rect x="{x1:.1f}" y="{y + (5 if bar.indent else 2)}" width="{w:.1f}" '
                     f'height="{row_h - (10 if bar.indent else 4)}" rx="3"/>')
        parts.append(_text(min(x1 + w + 6, width - right + 6), y + 13, text, "bar-text", "start"))
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(rows: Sequence[tuple[str, float, str]], *, title: str, width: int = 640) -> str:
    """Horizontal bars: ``(label, value, value as text)`` per row, scaled to the largest value."""
    if not rows:
        return '<p class="muted">No data yet.</p>'
    top = max((value for _, value, _ in rows), default=0.0) or 1.0
    label_w, right, row_h = 220, 120, 24
    plot = width - label_w - right
    height = row_h * len(rows) + 8
    parts = [(f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
              f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">'),
             f"<title>{escape(title)}</title>"]
    for i, (label, value, text) in enumerate(rows):
        y = 4 + i * row_h
        w = max(plot * value / top, 1.5)
        parts.append(f"<g><title>{escape(f'{label}: {text}')}</title>")
        parts.append(_text(label_w - 8, y + 15, _short(label, 34), "row-label", "end"))
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" rx="3" class="chart-bar"/>')
        parts.append(_text(label_w + w + 6, y + 15, text, "bar-text", "start"))
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)
