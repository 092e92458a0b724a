"""Every route of the web view over HTTP (Starlette's TestClient): pages, fragments, filters,
paging, the read-only default, CSRF protection of the actions, and the actions themselves."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.flows import CRASHED, DECIDED, FAILED, FORK, WAITING, WORKFLOWS, change

pytest.importorskip("starlette")
from starlette.testclient import TestClient

from phaseledger import Engine
from phaseledger.web import create_app
from phaseledger.web.forms import CSRF_COOKIE, CSRF_FIELD

SECRET = "http-test-secret"


@pytest.fixture(scope="module")
def client(filled_store: Path) -> Iterator[TestClient]:
    """The read-only view of the filled store."""
    with TestClient(create_app(f"sqlite:///{filled_store}", workflows=WORKFLOWS)) as c:
        yield c


@pytest.fixture
def acting(store_copy: str) -> Iterator[TestClient]:
    """The view of a copy of the filled store, with actions."""
    with TestClient(create_app(store_copy, workflows=WORKFLOWS, actions_secret=SECRET)) as c:
        yield c


def csrf_token(client: TestClient, path: str) -> str:
    """Open a page (the browser gets its CSRF cookie) and read the token its forms carry."""
    page = client.get(path)
    assert page.status_code == 200
    found = re.search(rf'name="{CSRF_FIELD}" value="([0-9a-f]+)"', page.text)
    assert found, "the page has no action form"
    return found.group(1)


@pytest.mark.parametrize("path", [
    "/runs", "/fragments/runs", f"/runs/{CRASHED}", f"/runs/{WAITING}", f"/runs/{DECIDED}", f"/runs/{FORK}",
    f"/runs/{FAILED}", f"/runs/{CRASHED}?at=3", f"/fragments/run?id={WAITING}", "/compare",
    f"/compare?a={DECIDED}&b={FORK}", "/reports",
])
def test_every_page_renders(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.count("<h1>") == (0 if path.startswith("/fragments") else 1)


def test_the_root_redirects_to_the_runs_and_static_files_are_served(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code in (302, 307) and response.headers["location"].endswith("/runs")
    assert "data-refresh" in client.get("/static/app.js").text
    assert client.get("/static/app.css").headers["content-type"].startswith("text/css")


def test_unknown_runs_are_404(client: TestClient) -> None:
    assert client.get("/runs/no-such-run").status_code == 404
    assert "no run &#39;no-such-run&#39;" in client.get("/runs/no-such-run").text
    assert client.get("/fragments/run?id=no-such-run").status_code == 404
    assert client.get(f"/compare?a={DECIDED}&b=no-such-run").status_code == 404


def _listed(html: str) -> list[str]:
    return re.findall(r'<td class="mono"><a href="/runs/([^"]+)">', html)


def test_the_runs_list_filters(client: TestClient) -> None:
    assert sorted(_listed(client.get("/runs").text)) == sorted([CRASHED, WAITING, DECIDED, FORK, FAILED])
    assert _listed(client.get("/runs?status=waiting").text) == [WAITING]
    assert _listed(client.get("/runs?status=failed").text) == [FAILED]
    assert sorted(_listed(client.get("/runs?workflow=change").text)) == sorted([WAITING, DECIDED, FORK])
    assert _listed(client.get("/runs?phase=stopped").text) == [FORK]
    assert sorted(_listed(client.get("/runs?q=DECIDED").text)) == sorted([DECIDED, FORK])  # any case
    assert _listed(client.get("/runs?q=%25").text) == []  # LIKE wildcards are literal text
    assert _listed(client.get("/runs?since=2000-01-01T00:00&until=2000-01-02T00:00").text) == []
    assert len(_listed(client.get("/runs?since=2000-01-01T00:00").text)) == 5
    assert len(_listed(client.get("/runs?status=bogus&size=nope&page=-3").text)) == 5  # bad values are ignored
    fragment = client.get("/fragments/runs?status=waiting").text
    assert "<html" not in fragment and _listed(fragment) == [WAITING]


def test_the_runs_list_pages_newest_first(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/many.db"

    async def start_many() -> None:
        engine = Engine(url, workflows=[change])
        try:
            for i in range(23):
                await engine.start(change, {"request": f"r{i}"}, run_id=f"run-{i:02d}")
        finally:
            engine.close()

    asyncio.run(start_many())
    with TestClient(create_app(url, workflows=[change], page_size=10)) as c:
        first = c.get("/runs")
        assert _listed(first.text) == [f"run-{i:02d}" for i in range(22, 12, -1)]
        assert "Page 1 of 3" in first.text and 'rel="next"' in first.text and 'rel="prev"' not in first.text
        third = c.get("/runs?page=3")
        assert _listed(third.text) == ["run-02", "run-01", "run-00"]
        assert "23 runs match; showing 21–23" in third.text and 'rel="next"' not in third.text
        assert _listed(c.get("/runs?page=2&size=5").text) == [f"run-{i:02d}" for i in range(17, 12, -1)]


def test_read_only_is_the_default(client: TestClient) -> None:
    page = client.get(f"/runs/{WAITING}").text
    assert 'method="post"' not in page and "read-only" in page
    for action in ("signal", "cancel", "resume", "retry", "fork"):
        response = client.post(f"/actions/{action}", data={"run_id": WAITING, "signal": "decide"})
        assert response.status_code == 403
        assert "actions are disabled" in response.text
    assert client.get(f"/runs/{WAITING}").text.count('class="badge s-waiting"') >= 1


def test_actions_need_a_valid_csrf_token_from_the_same_site(acting: TestClient) -> None:
    token = csrf_token(acting, f"/runs/{WAITING}")
    form = {"run_id": WAITING, "signal": "decide", "approved": "true"}
    assert acting.post("/actions/signal", data=form).status_code == 403  # no token
    assert acting.post("/actions/signal", data={**form, CSRF_FIELD: "0" * 64}).status_code == 403  # wrong one
    other = TestClient(acting.app)  # another browser: no cookie, so the token is not its own
    assert other.post("/actions/signal", data={**form, CSRF_FIELD: token}).status_code == 403
    cross = acting.post("/actions/signal", data={**form, CSRF_FIELD: token},
                        headers={"origin": "https://evil.example"})
    assert cross.status_code == 403
    assert acting.post("/actions/nonsense", data={CSRF_FIELD: token}).status_code == 404
    assert acting.get(f"/runs/{WAITING}").text.count("SignalReceived") == 0  # nothing was sent
    sent = acting.post("/actions/signal", data={**form, CSRF_FIELD: token}, follow_redirects=False)
    assert sent.status_code == 303
    assert "signal+%27decide%27+sent" in sent.headers["location"]
    assert "SignalReceived" in acting.get(f"/runs/{WAITING}").text


def test_the_cookie_is_strict_same_site_and_http_only(acting: TestClient) -> None:
    response = TestClient(acting.app).get("/runs")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{CSRF_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_a_signal_form_is_generated_from_the_signal_model(acting: TestClient) -> None:
    page = acting.get(f"/runs/{WAITING}").text
    assert re.search(r'<input type="checkbox" id="s0-field-approved" name="approved"', page)
    assert re.search(r'<select id="s0-field-priority" name="priority"', page)
    assert '<label for="s0-field-reviewers">Reviewers</label>' in page
    assert '<textarea id="s1-field-payload" name="payload">' in page  # "note" takes plain JSON


def test_signal_cancel_retry_resume_and_fork_actions(acting: TestClient, store_copy: str) -> None:
    token = csrf_token(acting, f"/runs/{WAITING}")
    bad = acting.post("/actions/signal", data={CSRF_FIELD: token, "run_id": WAITING, "signal": "decide",
                                               "priority": "urgent"}, follow_redirects=False)
    assert bad.status_code == 303 and "error=" in bad.headers["location"]  # the model refused it

    sent = acting.post("/actions/signal", data={CSRF_FIELD: token, "run_id": WAITING, "signal": "decide",
                                                "approved": "true", "comment": "ok", "priority": "low"})
    assert sent.status_code == 200 and "signal &#39;decide&#39; sent" in sent.text
    resumed = acting.post("/actions/resume", data={CSRF_FIELD: token, "run_id": WAITING})
    assert resumed.status_code == 200 and "resume started" in resumed.text
    engine = Engine(store_copy, workflows=WORKFLOWS)
    try:
        for _ in range(200):
            if engine.get(WAITING).finished:
                break
            acting.get("/runs")  # lets the server's loop drive the run meanwhile
        assert engine.get(WAITING).status == "completed"
        assert engine.get(WAITING).state.priority == "low"

        retried = acting.post("/actions/retry", data={CSRF_FIELD: token, "run_id": FAILED})
        assert "retry started" in retried.text
        not_failed = acting.post("/actions/retry", data={CSRF_FIELD: token, "run_id": DECIDED})
        assert "only a failed run can be retried" in not_failed.text

        forked = acting.post("/actions/fork", data={CSRF_FIELD: token, "run_id": DECIDED, "at": "v2",
                                                    "new_run_id": "forked-here"}, follow_redirects=False)
        assert forked.status_code == 303 and forked.headers["location"].startswith("/runs/forked-here?")
        assert engine.get("forked-here").parent == {"run_id": DECIDED, "version": 2, **{
            k: v for k, v in (engine.get("forked-here").parent or {}).items() if k not in ("run_id", "version")}}

        asyncio.run(engine.start(change, {"request": "x"}, run_id="to-cancel"))
        cancelled = acting.post("/actions/cancel", data={CSRF_FIELD: token, "run_id": "to-cancel",
                                                         "reason": "changed my mind"})
        assert "run cancelled" in cancelled.text
        assert engine.get("to-cancel").status == "cancelled"
        again = acting.post("/actions/cancel", data={CSRF_FIELD: token, "run_id": "to-cancel"})
        assert "error" in again.text.lower() and "cancelled" in again.text
    finally:
        engine.close()


def test_artifacts_are_rendered_as_safe_html(client: TestClient) -> None:
    page = client.get(f"/runs/{DECIDED}").text
    assert "<h4>Plan</h4>" in page
    assert "<li>back up: deploy v2</li>" in page
    assert "&lt;script&gt;alert(" in page and "<script>alert(" not in page
    assert '<th scope="col">step</th><th scope="col">result</th>' in page


def test_the_state_at_an_event(client: TestClient) -> None:
    page = client.get(f"/runs/{DECIDED}?at=4").text
    assert "State at event v4" in page and 'id="v4" class="selected"' in page
    out_of_range = client.get(f"/runs/{DECIDED}?at=999")
    assert out_of_range.status_code == 200 and 'class="notice error"' in out_of_range.text


def test_a_run_of_a_workflow_not_registered_draws_what_it_took(filled_store: Path) -> None:
    with TestClient(create_app(f"sqlite:///{filled_store}")) as c:  # no workflows given
        page = c.get(f"/runs/{CRASHED}").text
    assert "is not registered here" in page
    assert page.count('<g class="phase visited') == 4  # planning, execution, validation, completion


def test_mounted_under_a_prefix_links_keep_the_prefix(filled_store: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/ops/runs-ui", app=create_app(f"sqlite:///{filled_store}",
                                                                    workflows=WORKFLOWS))])
    with TestClient(outer) as c:
        page = c.get(f"/ops/runs-ui/runs/{DECIDED}").text
        assert 'href="/ops/runs-ui/static/app.css"' in page
        assert f'href="/ops/runs-ui/runs/{FORK}"' in page
        assert c.get("/ops/runs-ui/static/app.css").status_code == 200
        assert c.get("/ops/runs-ui/runs").status_code == 200


def test_an_engine_can_be_shared_and_is_not_closed_by_the_app(filled_store: Path) -> None:
    engine = Engine(f"sqlite:///{filled_store}", workflows=WORKFLOWS)
    try:
        with TestClient(create_app(engine)) as c:
            assert c.get(f"/runs/{DECIDED}").status_code == 200
        assert engine.get(DECIDED).status == "completed"  # still usable after the app shut down
    finally:
        engine.close()


def test_without_the_web_extra_create_app_names_it() -> None:
    code = ("import sys; sys.modules['starlette'] = None\n"
            "import phaseledger, phaseledger.web\n"
            "try:\n    phaseledger.web.create_app('memory://')\n"
            "except phaseledger.web.WebUnavailable as e:\n    print(type(e).__mro__[1].__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("PhaseledgerError") and "pip install 'phaseledger[web]'" in out and "'starlette'" in out


class Serving:
    """``phaseledger serve`` in a process of its own, on a free port."""

    def __init__(self, store: str, *args: str, env: dict[str, str] | None = None) -> None:
        import os

        from tests.web.conftest import ROOT, free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = ""
        """What the command printed (once it has stopped)."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "phaseledger.cli", "--store", store, "--workflows", "tests.web.flows", "serve",
             "--port", str(self.port), *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})})

    def __enter__(self) -> Serving:
        import time

        import httpx

        for _ in range(300):
            try:
                httpx.get(f"{self.url}/runs", timeout=2)
                return self
            except httpx.TransportError:
                if self.process.poll() is not None:
                    raise AssertionError(self.process.stderr.read() if self.process.stderr else "serve exited") from None
                time.sleep(0.1)
        raise AssertionError("phaseledger serve did not answer")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.output, _ = self.process.communicate(timeout=30)


def test_phaseledger_serve_serves_the_view_read_only(filled_store: Path) -> None:
    import httpx

    with Serving(f"sqlite:///{filled_store}") as served:
        response = httpx.get(f"{served.url}/runs")
        assert response.status_code == 200 and CRASHED in response.text and "read-only" in response.text
        assert httpx.post(f"{served.url}/actions/cancel", data={"run_id": WAITING}).status_code == 403
    assert f"serving http://127.0.0.1:{served.port}/" in served.output and "read-only" in served.output


def test_phaseledger_serve_with_a_secret_and_a_worker_acts(store_copy: str) -> None:
    import time

    import httpx

    with Serving(store_copy, "--worker", "--refresh", "0", env={"PHASELEDGER_WEB_SECRET": "from-the-env"}) as served:
        with httpx.Client(base_url=served.url) as browser:
            page = browser.get(f"/runs/{WAITING}").text
            token = re.search(rf'name="{CSRF_FIELD}" value="([0-9a-f]+)"', page)
            assert token and "data-refresh" not in page
            sent = browser.post("/actions/signal", data={CSRF_FIELD: token.group(1), "run_id": WAITING,
                                                         "signal": "decide", "approved": "true"})
            assert sent.status_code == 303
            for _ in range(300):  # the server's worker drives the woken run
                if 'id="run-status">completed' in browser.get(f"/runs/{WAITING}").text:
                    break
                time.sleep(0.1)
            assert 'id="run-status">completed' in browser.get(f"/runs/{WAITING}").text
    assert "actions enabled" in served.output


def test_serve_refuses_a_missing_store(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "phaseledger.cli", "--store", f"sqlite:///{tmp_path}/nope.db",
                             "serve"], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "does not exist" in result.stderr




def test_live_refresh_can_be_switched_off(filled_store: Path) -> None:
    with TestClient(create_app(f"sqlite:///{filled_store}", workflows=WORKFLOWS, refresh_seconds=0)) as c:
        for path in ("/runs", f"/runs/{WAITING}"):
            page = c.get(path).text
            assert "data-refresh" not in page and "live-toggle" not in page
    with TestClient(create_app(f"sqlite:///{filled_store}", workflows=WORKFLOWS, refresh_seconds=2.5)) as c:
        assert 'data-interval="2.5"' in c.get(f"/runs/{WAITING}").text
        assert "data-refresh" not in c.get(f"/runs/{DECIDED}").text  # a finished run does not change


def test_a_damaged_run_shows_what_can_be_read(store_copy: str) -> None:
    from phaseledger import Store
    from tests.integration.damage import damage

    store = Store(store_copy)
    try:
        damage(store, DECIDED, 9)  # a row in the middle of its log cannot be read any more
    finally:
        store.close()
    with TestClient(create_app(store_copy, workflows=WORKFLOWS)) as c:
        page = c.get(f"/runs/{DECIDED}")
        assert page.status_code == 200
        assert 'class="badge s-damaged"' in page.text and "CorruptEvent" in page.text
        assert 'id="v8"' in page.text and 'id="v9"' not in page.text  # the events before the damaged row
        assert c.get(f"/fragments/run?id={DECIDED}").status_code == 200


def test_a_run_being_driven_shows_its_driver_and_heartbeat(store_copy: str) -> None:
    import threading

    from phaseledger import Context, Workflow
    from tests.web.flows import Job

    release = threading.Event()
    holding = Workflow("holding", state=Job)

    @holding.phase(initial=True, final=True)
    async def hold(ctx: Context[Job]) -> None:
        await ctx.step("wait", lambda: release.wait(60))

    engine = Engine(store_copy, workflows=[holding])
    driving = threading.Thread(target=asyncio.run, args=(engine.run(holding, {}, run_id="held"),))
    driving.start()
    try:
        with TestClient(create_app(store_copy, workflows=[holding])) as c:
            for _ in range(400):
                page = c.get("/runs/held")
                if page.status_code == 200 and "heartbeat" in page.text:
                    break
                threading.Event().wait(0.05)
            assert re.search(r'<td id="run-driver">running on [^<]+:\d+, heartbeat \d+ s ago</td>', page.text)
            assert 'class="badge s-running"' in page.text
    finally:
        release.set()
        driving.join(timeout=60)
        engine.close()


@pytest.mark.postgres
def test_the_view_on_postgresql(postgres_url: str) -> None:
    from tests.web.flows import Decision

    async def make() -> None:
        engine = Engine(postgres_url, workflows=WORKFLOWS, max_inline_wait=0)
        try:
            await engine.run(change, {"request": "on postgres"}, run_id="pg-change")
            await engine.signal("pg-change", "decide", Decision(approved=True))
            await engine.resume("pg-change")
            await engine.run(change, {"request": "still waiting"}, run_id="pg-waiting")
        finally:
            engine.close()

    asyncio.run(make())
    with TestClient(create_app(postgres_url, workflows=WORKFLOWS, actions_secret=SECRET)) as c:
        assert sorted(_listed(c.get("/runs").text)) == ["pg-change", "pg-waiting"]
        assert _listed(c.get("/runs?status=waiting&q=PG-").text) == ["pg-waiting"]
        page = c.get("/runs/pg-change").text
        assert "<h4>Plan</h4>" in page and page.count('<g class="phase visited') == 4
        token = csrf_token(c, "/runs/pg-waiting")
        sent = c.post("/actions/signal", data={CSRF_FIELD: token, "run_id": "pg-waiting", "signal": "decide",
                                               "approved": "on"})
        assert "signal &#39;decide&#39; sent" in sent.text and "SignalReceived" in sent.text
        assert "tokens" in c.get("/reports").text.lower()


def test_an_effect_in_doubt_is_listed_and_decided_from_the_page(tmp_path: Path) -> None:
    """A step with an external effect (policy ``ask``) stopped between its intent and its result:
    the run page lists it with its idempotency key, and a person's decision completes the run."""
    from pydantic import BaseModel

    from phaseledger import Context, Effect, Workflow

    class Payment(BaseModel):
        receipt: str = ""

    charged: list[str] = []

    async def charge() -> str:
        charged.append("charge")
        if len(charged) == 1:
            await asyncio.sleep(3600)  # stopped here: intent recorded, result never
        return "receipt-from-the-step"

    payments = Workflow("payments", state=Payment)

    @payments.phase(initial=True, final=True)
    async def paying(ctx: Context[Payment]) -> str:
        ctx.state.receipt = await ctx.step("charge", charge, effect=Effect(on_doubt="ask"))
        return ctx.state.receipt

    url = f"sqlite:///{tmp_path}/runs.db"

    async def stop_in_doubt() -> None:
        engine = Engine(url, workflows=[payments])
        try:
            driving = asyncio.ensure_future(engine.run(payments, run_id="pay-1"))
            while not charged:
                await asyncio.sleep(0.01)
            driving.cancel()
            await asyncio.gather(driving, return_exceptions=True)
            await engine.drives.stop_all()  # the shielded drive too, as when the process dies
            assert (await engine.resume("pay-1")).awaits_effect_decision  # policy "ask": it waits for a person
        finally:
            engine.close()

    asyncio.run(stop_in_doubt())
    with TestClient(create_app(url, workflows=[payments], actions_secret=SECRET)) as client:
        page = client.get("/runs/pay-1")
        assert "Effects in doubt" in page.text and "pay-1:" in page.text and "Decide <code>charge</code>" in page.text
        token = csrf_token(client, "/runs/pay-1")
        bad = client.post("/actions/resolve", data={CSRF_FIELD: token, "run_id": "pay-1", "happened": "yes",
                                                     "result": "{not json"})
        assert "is not JSON" in bad.text
        done = client.post("/actions/resolve", data={CSRF_FIELD: token, "run_id": "pay-1", "happened": "yes",
                                                      "result": '"receipt-decided"'})
        assert "decision sent" in done.text
        engine = Engine(url, workflows=[payments])
        try:
            for _ in range(200):
                if engine.get("pay-1").finished:
                    break
                client.get("/runs")  # lets the server's loop drive the run meanwhile
            run = engine.get("pay-1")
            assert (run.status, run.output, run.in_doubt) == ("completed", "receipt-decided", [])
        finally:
            engine.close()
    assert charged == ["charge"]  # the decision stood in for the effect: it did not run again
