"""The web view in a real browser: headless chromium, driven by Playwright, against a served app.

The store holds real runs (a research run killed with SIGKILL and resumed, a waiting
change, a decided change and its fork, a failed run; see :mod:`tests.web.flows`). The
tests click through the pages as a person would, send a signal from the generated form,
and check what is visible, plus the basics of accessibility: every form field has a
label, headings do not skip levels, and links and buttons work from the keyboard.
Each page is saved under ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web.conftest import Served, off_loop, screenshot
from tests.web.flows import CRASHED, DECIDED, FAILED, FORK, WAITING, WORKFLOWS

pytest.importorskip("starlette")
expect: Any = pytest.importorskip("playwright.sync_api").expect
expect.set_options(timeout=20_000)  # a bound on waiting for what the page shows, generous for a loaded machine

A11Y_PROBLEMS = """() => {
  const problems = [];
  for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
    const labelled = (el.labels && el.labels.length) || el.getAttribute('aria-label')
      || el.getAttribute('aria-labelledby');
    if (!labelled) problems.push('no label: ' + el.outerHTML.slice(0, 100));
  }
  const levels = [...document.querySelectorAll('h1, h2, h3, h4, h5, h6')].map(h => Number(h.tagName[1]));
  const ones = levels.filter(l => l === 1).length;
  if (ones !== 1) problems.push(ones + ' h1 headings');
  let previous = 0;
  for (const level of levels) {
    if (level > previous + 1) problems.push('heading jumps from h' + previous + ' to h' + level);
    previous = level;
  }
  if (!document.documentElement.lang) problems.push('no lang on <html>');
  for (const img of document.querySelectorAll('svg[role=img]')) {
    if (!img.getAttribute('aria-label') && !img.getAttribute('aria-labelledby')) problems.push('svg without a name');
  }
  return problems;
}"""


def accessible(page: Any) -> None:
    """Assert the page's accessibility basics (labels, headings, names of images, language)."""
    assert page.evaluate(A11Y_PROBLEMS) == []


def tab_to(page: Any, text: str, *, limit: int = 80) -> None:
    """Press Tab until the focused element's text contains ``text``."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if text in (page.evaluate("() => document.activeElement && document.activeElement.textContent") or ""):
            return
    raise AssertionError(f"tabbing {limit} times never reached an element reading {text!r}")


@pytest.fixture(scope="module")
def read_only(filled_store: Path) -> Iterator[Served]:
    """The view of the filled store, read-only (no actions secret)."""
    from phaseledger.web import create_app

    app = create_app(f"sqlite:///{filled_store}", workflows=WORKFLOWS, refresh_seconds=1)
    with Served(app) as served:
        yield served


@pytest.fixture
def acting(store_copy: str) -> Iterator[Served]:
    """The view of a copy of the filled store, with actions and a worker that drives what they wake."""
    from phaseledger.web import create_app

    app = create_app(store_copy, workflows=WORKFLOWS, actions_secret="browser-test-secret", worker=True,
                     refresh_seconds=1)
    with Served(app) as served:
        yield served


def test_the_runs_list_filters_pages_and_opens_a_run_from_the_keyboard(page: Any, read_only: Served) -> None:
    page.goto(f"{read_only.url}/runs")
    expect(page.locator("h1")).to_have_text("Runs")
    table = page.locator("#runs-table")
    for run_id in (CRASHED, WAITING, DECIDED, FORK, FAILED):
        expect(table.get_by_role("link", name=run_id, exact=True)).to_be_visible()
    expect(page.locator("#runs-count")).to_contain_text("5 runs match")
    accessible(page)
    screenshot(page, "runs-list")

    page.get_by_label("Status").select_option("waiting")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"status=waiting"))
    expect(page.locator("#runs-count")).to_contain_text("1 run matches")
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table.locator("tbody tr").first).to_contain_text("waits for decide")
    screenshot(page, "runs-list-waiting")

    page.goto(f"{read_only.url}/runs")
    page.get_by_label("Run id contains").fill("fork")
    page.get_by_label("Run id contains").press("Enter")
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table.locator("tbody tr").first).to_contain_text(FORK)

    page.goto(f"{read_only.url}/runs?size=25")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    tab_to(page, CRASHED)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{read_only.url}/runs/{CRASHED}")
    expect(page.locator("h1")).to_contain_text(CRASHED)


def test_the_runs_list_refreshes_itself(page: Any, store_copy: str) -> None:
    import asyncio

    from phaseledger import Engine
    from phaseledger.web import create_app
    from tests.web.flows import fragile

    with Served(create_app(store_copy, workflows=WORKFLOWS, refresh_seconds=1)) as served:
        page.goto(f"{served.url}/runs?q=billing")
        expect(page.locator("#runs-table tbody tr")).to_have_count(1)
        engine = Engine(store_copy, workflows=WORKFLOWS)
        try:
            off_loop(asyncio.run, engine.start(fragile, {"size": 1}, run_id="billing-new"))
        finally:
            engine.close()
        # No reload: the list's fragment is fetched again every second.
        expect(page.locator("#runs-table tbody tr")).to_have_count(2)
        expect(page.get_by_role("link", name="billing-new")).to_be_visible()


def test_a_crashed_and_resumed_run_shows_its_machine_timeline_usage_and_history(page: Any, read_only: Served) -> None:
    page.goto(f"{read_only.url}/runs/{CRASHED}")
    expect(page.locator("#run-status")).to_have_text("completed")
    diagram = page.locator("svg.diagram")
    expect(diagram.locator("g.phase.visited")).to_have_count(4)
    expect(diagram.locator("g.phase.current")).to_contain_text("completion")
    expect(diagram.locator("text.edge-label.taken").filter(has_text="×2")).to_have_count(1)  # execution -> validation
    timeline = page.locator("svg.timeline")
    expect(timeline).to_contain_text("execution #2")
    expect(timeline).to_contain_text("researcher: model request")
    expect(timeline).to_contain_text("resumed (recover)")
    expect(page.locator("#usage-by-model")).to_contain_text("local-researcher")
    expect(page.locator("#usage-by-phase")).to_contain_text("execution")
    expect(page.locator("#events-table")).to_contain_text("resumed (recover)")
    expect(page.locator("#run-summary")).to_contain_text("served from the log on resumes")
    accessible(page)
    screenshot(page, "run-crashed-and-resumed")

    # The state at any event: click an event's version.
    row = page.locator("#events-table tbody tr").filter(has_text="→ validation").first
    version = row.locator("td").first.inner_text()
    row.get_by_role("link").click()
    expect(page.locator("#state-heading")).to_contain_text(f"State at event {version}")
    expect(page.locator("#events-table tr.selected")).to_have_count(1)
    expect(page.locator("#state-json")).to_contain_text('"topic": "durable execution"')
    screenshot(page, "run-state-at-event")

    page.locator("#events-table details summary").first.click()
    expect(page.locator("#events-table details[open] pre")).to_contain_text('"workflow": "research"')


def test_a_waiting_run_shows_its_signal_and_deadline_read_only(page: Any, read_only: Served) -> None:
    page.goto(f"{read_only.url}/runs/{WAITING}")
    expect(page.locator("#run-status")).to_have_text("waiting")
    expect(page.locator("#run-waiting")).to_contain_text("signal decide")
    expect(page.locator("#run-waiting")).to_contain_text("deadline")
    expect(page.locator("#run-driver")).to_contain_text("not driven")
    expect(page.locator("form[method=post]")).to_have_count(0)  # read-only: no actions
    expect(page.locator("#actions-heading")).to_have_count(0)
    accessible(page)
    screenshot(page, "run-waiting-read-only")


def test_sending_a_signal_from_the_generated_form_finishes_the_run(page: Any, acting: Served) -> None:
    page.goto(f"{acting.url}/runs/{WAITING}")
    form = page.locator("form").filter(has=page.get_by_role("button", name="Send decide"))
    expect(form.get_by_label("Approved")).to_be_visible()
    expect(form.get_by_label("Priority")).to_have_value("normal")
    accessible(page)
    screenshot(page, "run-waiting-actions")
    form.get_by_label("Approved").check()
    form.get_by_label("Comment").fill("approved in the browser")
    form.get_by_label("Priority").select_option("high")
    form.get_by_label("Reviewers").fill('["ana", "bo"]')
    form.get_by_role("button", name="Send decide").focus()
    page.keyboard.press("Enter")
    expect(page.locator(".notice.ok")).to_contain_text("signal 'decide' sent")
    # The server's worker drives the woken run; the summary refreshes itself until it is done.
    expect(page.locator("#run-status")).to_have_text("completed", timeout=30_000)
    page.reload()
    expect(page.locator("#state-json")).to_contain_text('"comment": "approved in the browser"')
    expect(page.locator("#state-json")).to_contain_text('"priority": "high"')
    expect(page.locator("#events-table")).to_contain_text("signal decide")
    artifacts = page.locator("section:has(#artifacts-heading)")
    expect(artifacts.get_by_role("heading", name="Plan", exact=True)).to_be_visible()
    expect(artifacts).to_contain_text("<script>alert('x')</script> stays text.")
    expect(artifacts.locator("table")).to_contain_text("done: apply: rotate the API keys")
    assert page.locator("script:not([src])").count() == 0  # the artifact's markup stayed text
    accessible(page)
    screenshot(page, "run-signalled-and-completed")


def test_an_invalid_signal_is_refused_with_the_reason(page: Any, acting: Served) -> None:
    page.goto(f"{acting.url}/runs/{WAITING}")
    form = page.locator("form").filter(has=page.get_by_role("button", name="Send decide"))
    form.get_by_label("Reviewers").fill("[not json")
    form.get_by_role("button", name="Send decide").click()
    expect(page.locator(".notice.error")).to_contain_text("Reviewers is not valid JSON")
    expect(page.locator("#run-status")).to_have_text("waiting")


def test_forking_and_comparing_branches(page: Any, acting: Served) -> None:
    page.goto(f"{acting.url}/runs/{DECIDED}")
    lineage = page.locator("section:has(#lineage-heading)")
    expect(lineage.get_by_role("link", name=FORK)).to_be_visible()
    lineage.get_by_role("link", name="compare with its parent").click()
    expect(page.locator("h1")).to_have_text("Compare two runs")
    table = page.locator("#compare-table")
    expect(table).to_contain_text("planning → review → execution → done")
    expect(table).to_contain_text("planning → review → stopped")
    expect(page.locator("#verdict-heading")).to_have_text("Where they diverge")
    expect(table.locator("tr.changed").first).to_be_visible()
    accessible(page)
    screenshot(page, "compare-fork")

    page.goto(f"{acting.url}/runs/{DECIDED}")
    fork_form = page.locator("form").filter(has=page.get_by_role("button", name="Fork run"))
    review = fork_form.locator("option", has_text="phase review").first.get_attribute("value")
    fork_form.get_by_label("From checkpoint").select_option(review)
    fork_form.get_by_label("New run id (optional)").fill("decided-again")
    fork_form.get_by_role("button", name="Fork run").click()
    expect(page).to_have_url(re.compile(r"/runs/decided-again"))
    expect(page.locator(".notice.ok")).to_contain_text("forked from")
    expect(page.locator("#ancestors")).to_contain_text(DECIDED)
    screenshot(page, "run-forked")


def test_a_failed_run_can_be_retried_and_a_waiting_one_cancelled(page: Any, acting: Served) -> None:
    page.goto(f"{acting.url}/runs/{FAILED}")
    expect(page.locator("#run-summary")).to_contain_text("ConnectionRefusedError")
    page.get_by_role("button", name="Retry run").click()
    expect(page.locator(".notice.ok")).to_contain_text("retry started")
    expect(page.locator("#run-status")).to_have_text("failed", timeout=20_000)  # the service still refuses
    screenshot(page, "run-failed-retried")

    page.goto(f"{acting.url}/runs/{WAITING}")
    page.get_by_label("Reason").fill("not needed any more")
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator("#run-status")).to_have_text("cancelled")
    expect(page.locator("#events-table")).to_contain_text("cancelled: not needed any more")


def test_the_reports_page_charts_tokens_failures_and_durations(page: Any, read_only: Served) -> None:
    page.goto(f"{read_only.url}/runs")
    page.get_by_role("link", name="Reports").click()
    expect(page.locator("h1")).to_have_text("Reports")
    expect(page.get_by_role("img", name="Tokens by day and model")).to_be_visible()
    expect(page.locator("#tokens-table")).to_contain_text("local-researcher")
    expect(page.locator("#failures-table")).to_contain_text("ConnectionRefusedError")
    expect(page.get_by_role("img", name="Mean phase duration")).to_be_visible()
    expect(page.locator("#durations-table")).to_contain_text("execution")
    accessible(page)
    screenshot(page, "reports")
