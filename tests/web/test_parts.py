"""The web view's parts on their own: safe Markdown, generated signal forms, CSRF tokens, SVG."""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from phaseledger import InvalidInput, Workflow
from phaseledger.domain.diagram import StateDiagram
from phaseledger.web import markdown, svg
from phaseledger.web.forms import Csrf, parse_signal, signal_fields


def test_markdown_escapes_html_and_renders_its_subset() -> None:
    html = markdown.render(
        "# Title <b>x</b>\n\nSome **bold**, *em*, `a<b`, [ok](https://e.org/?a=1&b=2) and "
        "[bad](javascript:alert(1)).\n\n- one\n- two\n\n1. first\n\n> quoted\n\n```\n<raw>\n```\n\n"
        "| a | b |\n|---|---|\n| 1 | <i>2</i> |\n\n---\n"
    )
    assert "<h3>Title &lt;b&gt;x&lt;/b&gt;</h3>" in html
    assert "<strong>bold</strong>" in html and "<em>em</em>" in html and "<code>a&lt;b</code>" in html
    assert '<a href="https://e.org/?a=1&amp;b=2" rel="nofollow noopener">ok</a>' in html
    assert "javascript:" not in html.replace("[bad](javascript:alert(1))", "")  # left as text, not a link
    assert "<ul><li>one</li><li>two</li></ul>" in html and "<ol><li>first</li></ol>" in html
    assert "<blockquote>quoted</blockquote>" in html and "<pre><code>&lt;raw&gt;</code></pre>" in html
    assert "<td>&lt;i&gt;2&lt;/i&gt;</td>" in html and "<hr>" in html
    assert "<b>" not in html and "<i>" not in html and "<raw>" not in html


def test_table_artifacts_from_dicts_or_lists() -> None:
    from_dicts = markdown.table_artifact([{"a": 1, "b": "<x>"}, {"a": 2, "c": [1]}])
    assert '<th scope="col">a</th><th scope="col">b</th><th scope="col">c</th>' in from_dicts
    assert "<td>&lt;x&gt;</td>" in from_dicts and "<td>[1]</td>" in from_dicts
    from_lists = markdown.table_artifact([["name", "n"], ["x", 3]])
    assert '<th scope="col">name</th>' in from_lists and "<td>3</td>" in from_lists
    assert "empty" in markdown.table_artifact([])


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Payload(BaseModel):
    ok: bool
    count: int
    ratio: float = 0.5
    name: str
    note: str | None = None
    mode: Literal["a", "b"] = "a"
    color: Color = Color.BLUE
    tags: list[str] = Field(default_factory=list, description="Labels.")


def test_signal_fields_follow_the_model() -> None:
    fields = {f.name: f for f in signal_fields(Payload)}
    assert [(n, f.kind) for n, f in fields.items()] == [
        ("ok", "checkbox"), ("count", "number"), ("ratio", "number"), ("name", "text"), ("note", "text"),
        ("mode", "select"), ("color", "select"), ("tags", "json"),
    ]
    assert fields["count"].required and fields["count"].step == "1" and fields["ratio"].step == "any"
    assert not fields["note"].required and fields["mode"].choices == ["a", "b"]
    assert fields["color"].choices == ["red", "blue"] and fields["color"].value == "blue"
    assert fields["tags"].help == "Labels." and fields["tags"].value == "[]"
    assert [f.kind for f in signal_fields(None)] == ["json"]


def test_a_submitted_form_becomes_a_payload_the_model_accepts() -> None:
    form = {"ok": "true", "count": "3", "ratio": "", "name": "x", "note": "", "mode": "b", "color": "red",
            "tags": '["t"]'}
    payload = parse_signal(Payload, form)
    assert payload == {"ok": True, "count": "3", "name": "x", "mode": "b", "color": "red", "tags": ["t"]}
    model = Payload.model_validate(payload)
    assert (model.count, model.ratio, model.note, model.color) == (3, 0.5, None, Color.RED)
    assert parse_signal(Payload, {"count": "1", "name": ""})["ok"] is False  # an unticked box
    with pytest.raises(InvalidInput, match="Tags is not valid JSON"):
        parse_signal(Payload, {"tags": "[oops"})
    assert parse_signal(None, {"payload": ' {"a": 1} '}) == {"a": 1}
    assert parse_signal(None, {"payload": ""}) is None


def test_csrf_tokens_are_bound_to_the_nonce_and_the_secret() -> None:
    csrf = Csrf("one secret")
    nonce = Csrf.new_nonce()
    token = csrf.token(nonce)
    assert csrf.valid(nonce, token)
    assert not csrf.valid(Csrf.new_nonce(), token)
    assert not Csrf("another secret").valid(nonce, token)
    assert not csrf.valid(None, token) and not csrf.valid(nonce, None) and not csrf.valid(nonce, "")


class S(BaseModel):
    n: int = 0


def _loop_workflow() -> Workflow[S]:
    wf = Workflow("loop", state=S)

    @wf.phase(initial=True, to="check")
    async def work(ctx: object) -> None: ...

    @wf.phase(to={"work": lambda s: s.n < 3, "end": None})
    async def check(ctx: object) -> str:
        return "end"

    @wf.phase(final=True)
    async def end(ctx: object) -> None: ...

    return wf


def test_the_state_machine_svg_marks_visits_the_current_phase_and_edges_taken() -> None:
    diagram = StateDiagram.of(_loop_workflow())
    drawn = svg.state_machine(diagram, visited={"work": 3, "check": 3}, current="check",
                              taken={("work", "check"): 3, ("check", "work"): 2})
    assert drawn.startswith("<svg") and drawn.endswith("</svg>")
    assert drawn.count('class="phase visited') == 2 and 'class="phase visited current"' in drawn
    assert 'class="phase final"' in drawn  # end: not visited
    assert "×3" in drawn and "×2" in drawn and "[s.n &lt; 3] ×2" in drawn  # labels are escaped
    assert 'aria-labelledby="diagram-title"' in drawn and "current phase check" in drawn


def test_the_timeline_draws_bars_and_open_ones_to_the_edge() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    bars = [svg.Bar("phase a", t0, t0 + timedelta(seconds=2), "phase"),
            svg.Bar("step <x>", t0, t0 + timedelta(milliseconds=300), "step", indent=True),
            svg.Bar("waits", t0 + timedelta(seconds=2), t0 + timedelta(hours=3), "wait", open=True)]
    drawn = svg.timeline(bars)
    assert "2.0 s" in drawn and "300 ms" in drawn and "3.0 h so far" in drawn
    assert "step &lt;x&gt;" in drawn and "<x>" not in drawn
    assert "Nothing to draw" in svg.timeline([])


def test_bar_charts_scale_to_the_largest_value() -> None:
    drawn = svg.bar_chart([("a", 10.0, "10"), ("b", 5.0, "5")], title="T")
    widths = [float(w) for w in re.findall(r'width="([\d.]+)" height="16" rx="3" class="chart-bar"', drawn)]
    assert len(widths) == 2
    assert widths[0] == pytest.approx(2 * widths[1])
    assert 'aria-label="T"' in drawn
    assert "No data" in svg.bar_chart([], title="T")
