"""The live page on WEB_PORT (`GET /`, CONTRACT.md section 6) and the read endpoints only it needs.

The page is static (streams/serving/page/: HTML, JS, CSS and the pinned uPlot) and polls the read API every
second. What `/api/v1/kpis` and `/api/v1/ltv` lack comes from `Feed`, a plain consumer (no group) that starts
on the first request for it, reads back the tails of `metrics.channel`, `signals` and `attributions`, then
follows them into the pure boards of `streams.serving.dashboard`: a worker nobody looks at pays nothing.

Access: with WEB_TOKEN set, `guard` answers 401 to a request without the token (a JSON error for the API, the
login form for the page); `/metrics` stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.kafka.topics import ATTRIBUTIONS_TOPIC, METRICS_CHANNEL_TOPIC, SIGNALS_TOPIC
from streams.serving import access
from streams.serving.dashboard import (
    TREND_WINDOWS,
    Health,
    ModelCredits,
    Signals,
    Trends,
    health_sample,
    parse_last,
)
from streams.stages.topology import Wiring

log = logging.getLogger(__name__)

#: records read back per partition when the feed starts
FEED_TAILS = {METRICS_CHANNEL_TOPIC: 10_000, SIGNALS_TOPIC: 2_000, ATTRIBUTIONS_TOPIC: 20_000}
HEALTH_INTERVAL_S = 1.0
ASSET_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8"}
#: the page's own files, then uPlot (vendor/PIN.json says which release)
ASSETS = ("app.js", "style.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
UNAUTHORIZED = {"error": "unauthorized: send 'Authorization: Bearer <WEB_TOKEN>' or log in at /login"}


def page_file(name: str) -> bytes:
    return (resources.files("streams.serving") / "page" / name).read_bytes()


def content_type(name: str) -> str:
    return ASSET_TYPES[name[name.rindex("."):]]


def login_form(error: str = "", next_path: str = "/") -> bytes:
    """The login page: the page's stylesheet and one field, no script."""
    message = f'<p class="error">{error}</p>' if error else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Attribution: log in</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/page/style.css"></head><body class="login">'
        '<form method="post" action="/login"><h1>Attribution</h1><p>This page needs the WEB_TOKEN.</p>'
        f'{message}<input type="hidden" name="next" value="{_attribute(next_path)}">'
        '<label>Token <input type="password" name="token" autocomplete="current-password" autofocus required>'
        '</label><button type="submit">Log in</button></form></body></html>'
    ).encode()


def _attribute(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


class Feed:
    """The boards behind `/api/v1/trends`, `/models`, `/signals` and the consumer that fills them."""

    def __init__(self, w: Wiring) -> None:
        self.w = w
        self.trends = Trends()
        self.models = ModelCredits(w.settings.metrics_window_ms)
        self.signals = Signals()
        self.health = Health()
        self.ignored = 0
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        while True:
            try:
                await self.follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the page shows older figures meanwhile; try again
                log.warning("the page's feed stopped (%s): starting again in 2 s", exc)
            await asyncio.sleep(2.0)

    async def follow(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.w.bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=200)
        await consumer.start()
        try:
            await consumer.topics()
            partitions = [TopicPartition(topic, p) for topic in FEED_TAILS
                          for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not partitions:
                raise RuntimeError("the metric topics do not exist yet")
            consumer.assign(partitions)
            starts = await consumer.beginning_offsets(partitions)
            ends = await consumer.end_offsets(partitions)
            for tp in partitions:
                consumer.seek(tp, max(starts[tp], ends[tp] - FEED_TAILS[tp.topic]))
            while True:
                for tp, records in (await consumer.getmany(timeout_ms=500, max_records=5_000)).items():
                    for record in records:
                        self.ingest(tp.topic, record.key, record.value)
        finally:
            await consumer.stop()

    def ingest(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        try:
            message = None if value is None else orjson.loads(value)
        except orjson.JSONDecodeError:
            self.ignored += 1
            return
        if topic == METRICS_CHANNEL_TOPIC:
            self.trends.add(message)
        elif topic == SIGNALS_TOPIC:
            self.signals.add(key, message)
        else:
            self.models.add(message)

    def sample_health(self) -> None:
        m = self.w.metrics  # only the families the page rates, not every campaign's counters
        families = [*m.events.collect(), *m.lag.collect(), *m.consumer_lag.collect()]
        self.health.add(health_sample(time.monotonic(), families))


Handler = Callable[..., Awaitable[Any]]


def guard(w: Wiring, handler: Handler, page: bool = False) -> Handler:
    """`handler` behind WEB_TOKEN: 401 without it (the login form for the page, a JSON error for the API)."""

    async def guarded(web: Any, request: Any, **kwargs: Any) -> Any:
        if access.allowed(w.settings.web_token, request.headers, request.cookies):
            return await handler(web, request, **kwargs)
        if page:
            return web.bytes(login_form(), content_type="text/html", status=401, headers=dict(SECURITY_HEADERS))
        return web.bytes(orjson.dumps(UNAUTHORIZED), content_type="application/json", status=401,
                         headers={"WWW-Authenticate": 'Bearer realm="attribution"'})

    guarded.__name__ = handler.__name__
    return guarded


def json_response(web: Any, value: Any, status: int = 200) -> Any:
    return web.bytes(orjson.dumps(value), content_type="application/json", status=status,
                     headers={"Cache-Control": "no-store"})


def page_info(w: Wiring) -> dict[str, Any]:
    s = w.settings
    return {
        "reporting_currency": s.reporting_currency,
        "attribution_model": s.attribution_model,
        "metrics_window_ms": s.metrics_window_ms,
        "signal_window_ms": s.signal_window_ms,
        "romi_floor": s.romi_floor,
        "romi_scale": s.romi_scale,
        "ltv_stage": s.ltv_stage,
        "trend_windows": TREND_WINDOWS,
        "login": bool(s.web_token),  # the page offers to log out
    }


def register(w: Wiring, state_summary: Callable[[Wiring], dict[str, Any]]) -> Feed:
    feed = Feed(w)
    w.state["page"] = feed
    if not w.settings.web_token:
        log.warning("WEB_TOKEN is unset: the page and the read API on port %d are open to anyone who reaches it",
                    w.settings.web_port)
    index = page_file("index.html")
    assets = {name: page_file(name) for name in ASSETS}

    @w.app.timer(HEALTH_INTERVAL_S, name="page-health")
    async def sample_health() -> None:
        feed.sample_health()

    async def index_page(web: Any, request: Any) -> Any:
        return web.bytes(index, content_type="text/html", headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})

    w.app.page("/", name="page")(guard(w, index_page, page=True))

    for name in ASSETS:  # open: the login form needs the stylesheet, and none of them holds a figure
        w.app.page(f"/page/{name}", name=f"asset-{name}")(_asset_handler(name, assets[name]))

    async def info(web: Any, request: Any) -> Any:
        return json_response(web, page_info(w))

    def over_windows(view: Callable[[int], Any]) -> Handler:
        """A board of the feed over the last N windows (`?windows=N`); a bad N answers 400 with the reason."""

        async def board(web: Any, request: Any) -> Any:
            feed.ensure_running()
            try:
                last = parse_last(request.query)
            except ValueError as exc:
                return json_response(web, {"error": str(exc)}, status=400)
            return json_response(web, view(last))

        return board

    trends = over_windows(feed.trends.rows)
    models = over_windows(lambda last: {"attribution_model": w.settings.attribution_model, **feed.models.view(last)})

    async def signals(web: Any, request: Any) -> Any:
        feed.ensure_running()
        return json_response(web, feed.signals.rows())

    async def health(web: Any, request: Any) -> Any:
        summary = state_summary(w)
        return json_response(web, {**feed.health.view(), "pending_conversions": summary["pending_conversions"],
                                   "journeys": summary["journeys"]})

    for path, handler in (("info", info), ("trends", trends), ("models", models), ("signals", signals),
                          ("health", health)):
        w.app.page(f"/api/v1/{path}", name=f"api-{path}")(guard(w, handler))

    w.app.page("/login", name="login")(_login_view(w))
    w.app.page("/logout", name="logout")(_logout_view())

    @w.app.task
    async def stop_feed_on_shutdown() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        await feed.stop()

    return feed


def _asset_handler(name: str, body: bytes) -> Handler:
    async def asset(web: Any, request: Any) -> Any:
        return web.bytes(body, content_type=content_type(name).split(";")[0],
                         headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"})

    asset.__name__ = f"asset_{name.replace('/', '_').replace('.', '_')}"
    return asset


def _login_view(w: Wiring) -> type[faust.web.View]:
    class Login(faust.web.View):
        async def get(self, request: Any) -> Any:
            if not w.settings.web_token:
                return self.bytes(b"", status=303, headers={"Location": "/"})
            next_path = access.safe_next(request.query.get("next"))
            return self.bytes(login_form(next_path=next_path), content_type="text/html", headers=SECURITY_HEADERS)

        async def post(self, request: Any) -> Any:
            token = w.settings.web_token
            form = await request.post()
            next_path = access.safe_next(form.get("next") if isinstance(form.get("next"), str) else None)
            given = form.get("token")
            if not token:
                return self.bytes(b"", status=303, headers={"Location": next_path})
            if not isinstance(given, str) or not access.token_matches(given.strip(), token):
                return self.bytes(login_form("That is not the token.", next_path), content_type="text/html",
                                  status=401, headers=SECURITY_HEADERS)
            secure = request.headers.get("X-Forwarded-Proto") == "https" or request.scheme == "https"
            return self.bytes(b"", status=303, headers={"Location": next_path,
                                                        "Set-Cookie": access.session_cookie(token, secure)})

    return Login


def _logout_view() -> type[faust.web.View]:
    class Logout(faust.web.View):
        async def post(self, request: Any) -> Any:
            return self.bytes(b"", status=303, headers={"Location": "/", "Set-Cookie": access.cleared_cookie()})

    return Logout
