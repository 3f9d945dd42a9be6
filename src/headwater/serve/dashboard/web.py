"""The dashboard's HTTP routes (Starlette, server-rendered with Jinja2), mounted at ``/dashboard``.

==================================================  =========================================================
route                                               answer
==================================================  =========================================================
``GET  /``                                          303 to the first page
``GET  /login``, ``POST /login``                    the login form; a form POST of ``token`` (and ``next``):
                                                    303 to ``next`` with the session cookie, or the form
                                                    again with 401 (:mod:`.auth`)
``POST /logout``                                    303 to the login form, cookie removed
``GET  /pages/{page}?start&end&platform&where``     the page: controls, every chart drawn from the rows
                                                    embedded in it (ECharts, ``static/dashboard.js``)
``GET  /pages/{page}/charts/{chart}.csv|.json``     one chart's rows (``?item=`` for a ``for_each`` chart's
                                                    funnel / experiment; the page's controls as query)
``GET  /pages/{page}/events?platform``              server-sent events: ``event: live`` every
                                                    :data:`LIVE_INTERVAL_S` s with the rows of the page's
                                                    ``live`` charts, until the client disconnects
``GET  /static/…``, ``GET /vendor/echarts/…``       the page's CSS / JS, the vendored ECharts (no credential)
==================================================  =========================================================

Without a valid read token (:mod:`.auth`) a page answers 303 to the login form, the CSV /
JSON / event routes 401 in the API's error form. Errors: 400 for a malformed control (named),
404 for an unknown page or chart, 500 naming the file and key for a bad ``dashboard.toml``;
a chart whose metric fails (a range too long, the lake unreadable) shows the message in
place of the chart. Pages are sent with a Content-Security-Policy allowing only this
origin's scripts (the rows travel as JSON in ``<script type="application/json">``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from headwater.config import Home
from headwater.errors import HeadwaterError, NotFoundError, UnauthorizedError
from headwater.serve.access import TokenStore
from headwater.serve.api import error_response, status_of
from headwater.serve.dashboard import auth, charts, pages, sources

HERE = Path(__file__).parent
ECHARTS = HERE.parent / "static" / "vendor" / "echarts"
LIVE_INTERVAL_S = 1.0
MAX_FORM_BYTES = 4096
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def create_dashboard(home: Home) -> Starlette:
    """The dashboard of ``home`` (its tokens, lake and ``dashboard.toml``), to mount at ``/dashboard``."""
    tokens = TokenStore(home)
    templates = Jinja2Templates(directory=HERE / "templates")

    def root(request: Request) -> str:
        return request.scope.get("root_path", "")  # "/dashboard" where mounted: every link is relative to it

    def html(request: Request, name: str, status: int = 200, **context) -> Response:
        context = {"root": root(request), "nav": [], "principal": None, **context}
        return templates.TemplateResponse(request, name, context, status_code=status, headers=HEADERS)

    def to_login(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{root(request)}/login?{urlencode({'next': target})}", status_code=303)

    def page_of(request: Request) -> tuple[tuple[pages.Page, ...], pages.Page]:
        every = pages.load(home)
        page = next((p for p in every if p.id == request.path_params["page"]), None)
        if page is None:
            raise NotFoundError(f"page: no page {request.path_params['page']!r} (pages: {', '.join(p.id for p in every)})", field="page")
        return every, page

    def index(request: Request) -> Response:
        try:
            first = pages.load(home)[0].id
        except pages.PagesError:
            first = pages.defaults()[0].id
        return RedirectResponse(f"{root(request)}/pages/{first}", status_code=303)

    def login_form(request: Request) -> Response:
        return html(request, "login.html", next=request.query_params.get("next", ""), error=None)

    async def login(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return html(request, "login.html", 413, next="", error="the form is too large")
        form = {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
        token, target = form.get("token", "").strip(), form.get("next", "")
        try:
            await run_in_threadpool(tokens.authenticate, token)
        except UnauthorizedError as e:
            return html(request, "login.html", 401, next=target, error=e.message)
        response = RedirectResponse(auth.safe_next(target, root(request), f"{root(request)}/"), status_code=303)
        return auth.start_session(response, token, root(request), request.url.scheme == "https")

    def logout(request: Request) -> Response:
        response = RedirectResponse(f"{root(request)}/login", status_code=303)
        return auth.end_session(response, root(request), request.url.scheme == "https")

    def page_view(request: Request) -> Response:
        try:
            principal = auth.principal(request, tokens)
        except UnauthorizedError:
            return to_login(request)
        base = {"principal": principal, "nav": []}
        try:
            every, page = page_of(request)
            base["nav"] = every
            controls = _controls(request)
        except HeadwaterError as e:
            return html(request, "error.html", _status(e), message=e.message, **base)
        answers: dict = {}
        drawn = [charts.render(home, principal, i, controls, answers) for i in charts.instances(home, page)]
        return html(request, "page.html", page=page, charts=[_view(root(request), page, r, controls) for r in drawn],
                    controls=controls, platforms=sources.platforms(home), k=home.settings.serve.k_anonymity,
                    clear_filters=urlencode([q for q in controls.query() if q[0] != "where"]), uses=_uses(page),
                    events_url=f"{root(request)}/pages/{page.id}/events?{urlencode(controls.query())}", **base)

    def chart_data(request: Request, fmt: str) -> Response:
        try:
            principal = auth.principal(request, tokens)
            _, page = page_of(request)
            controls = _controls(request)
            chart_id, item = request.path_params["chart"], request.query_params.get("item")
            instance = next((i for i in charts.instances(home, page) if i.chart.id == chart_id and i.item == item), None)
            if instance is None:
                raise NotFoundError(f"chart: no chart {chart_id!r}{f' for {item!r}' if item else ''} on page {page.id!r}", field="chart")
        except HeadwaterError as e:
            return error_response(_status(e), type(e).__name__, e.message, e.field)
        r = charts.render(home, principal, instance, controls)
        if r.error:
            return error_response(_status(r.error), type(r.error).__name__, r.error.message, r.error.field)
        if fmt == "csv":
            name = f"{page.id}-{instance.key.replace('~', '-')}.csv"
            return Response(charts.to_csv(instance.chart, r.rows), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}", **HEADERS})
        return JSONResponse({"page": page.id, "chart": instance.chart.id, "item": instance.item, "columns": charts.columns(instance.chart, r.rows),
                             "rows": r.rows, "k": r.k, "suppressed": r.suppressed}, headers=HEADERS)

    async def csv_view(request: Request) -> Response:
        return await run_in_threadpool(chart_data, request, "csv")

    async def json_view(request: Request) -> Response:
        return await run_in_threadpool(chart_data, request, "json")

    async def live_events(request: Request) -> Response:
        token = auth.credential(request)
        try:
            principal = await run_in_threadpool(tokens.authenticate, token)
            _, page = await run_in_threadpool(page_of, request)
            controls = _controls(request)
        except HeadwaterError as e:
            return error_response(_status(e), type(e).__name__, e.message, e.field)
        live = [i for i in await run_in_threadpool(charts.instances, home, page) if i.chart.metric == "live"]

        def tick() -> dict:
            tokens.authenticate(token)  # a token revoked while the page is open ends its stream
            answers: dict = {}
            drawn = [charts.render(home, principal, i, controls, answers) for i in live]
            return {"charts": {r.instance.key: {"rows": r.rows, "suppressed": r.suppressed, "error": r.error and r.error.message}
                               for r in drawn}}

        async def stream():
            # sse-starlette cancels this generator when the client disconnects (at the sleep or the tick)
            while True:
                try:
                    payload = await run_in_threadpool(tick)
                except UnauthorizedError as e:
                    yield {"event": "denied", "data": json.dumps({"message": e.message})}
                    return
                yield {"event": "live", "data": json.dumps(payload)}
                await asyncio.sleep(LIVE_INTERVAL_S)

        return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/pages/{page}", page_view, methods=["GET"]),
        Route("/pages/{page}/charts/{chart}.csv", csv_view, methods=["GET"]),
        Route("/pages/{page}/charts/{chart}.json", json_view, methods=["GET"]),
        Route("/pages/{page}/events", live_events, methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        Mount("/vendor/echarts", StaticFiles(directory=ECHARTS), name="echarts"),
    ]
    return Starlette(routes=routes)


def _controls(request: Request) -> sources.Controls:
    return sources.Controls.parse(request.query_params, request.query_params.getlist("where"))


def _uses(page: pages.Page) -> dict[str, bool]:
    """Which controls the page shows: those a metric of its charts takes."""
    metrics = [sources.METRICS[c.metric] for c in page.charts]
    return {name: any(getattr(m, name) for m in metrics) for name in ("dates", "platform", "where")}


def _status(e: HeadwaterError) -> int:
    """The HTTP status of ``e``: the API's, but 500 for a bad pages file (the server's configuration)."""
    return 500 if isinstance(e, pages.PagesError) else status_of(e)


def _view(root: str, page: pages.Page, r: charts.Rendered, controls: sources.Controls) -> dict:
    """What the page template needs of one drawn chart: its spec for ``dashboard.js``, rows,
    columns, links and notes."""
    chart = r.instance.chart
    metric = sources.METRICS[chart.metric]
    query = controls.query() + ([("item", r.instance.item)] if r.instance.item is not None else [])
    link = f"{root}/pages/{page.id}/charts/{chart.id}"
    spec = {k: getattr(chart, k) for k in ("kind", "x", "series", "value", "low", "high", "label", "stack")}
    notes = []
    if controls.platform and not metric.platform:
        notes.append("every platform (this metric has no platform breakdown)")
    if controls.where and not metric.where:
        notes.append("not filtered (this metric takes no property filter)")
    if r.suppressed:
        notes.append(f"{r.suppressed} cell{'s' if r.suppressed > 1 else ''} with fewer than {r.k} persons withheld")
    return {"key": r.instance.key, "title": r.instance.title, "kind": chart.kind, "description": chart.description,
            "spec": spec | {"y": list(chart.y)}, "rows": r.rows, "columns": charts.columns(chart, r.rows), "error": r.error and r.error.message,
            "notes": notes, "csv": f"{link}.csv?{urlencode(query)}", "json": f"{link}.json?{urlencode(query)}",
            "live": chart.metric == "live"}
