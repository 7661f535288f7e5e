"""The HTTP collector: the public pixel and the keyed batch API (CONTRACT.md section 5).

`attribution collect` serves, on `COLLECTOR_PORT`:

- `GET|POST /px`: one impression, click or lead from a browser (query string, or a
  `navigator.sendBeacon` form/JSON body). The answer is a 1x1 GIF. The visitor's tracking ID is
  the `tid` parameter, else the `_tid` cookie, else a new ID set as that cookie. Orders and spend
  carry money and are refused here: they enter only through the keyed batch API or the topics.
- `POST /v1/events`: a JSON array or JSON lines of events of any type, behind
  `Authorization: Bearer <write key>` (`COLLECTOR_KEYS`; none configured: closed). Each event is
  judged alone; the valid ones are produced even when others are rejected, and the answer waits
  for their acks.
- Consent (CONTRACT.md section 10): a pixel request with `consent=0` carries `"consent": false`, reads and
  sets no cookie, takes no `tid` and clears a `_tid` cookie it brings; `GET /consent?given=0` (the pixel's
  `attribution.consent(false)`) only clears the cookie.
- Bots (CONTRACT.md section 9): a pixel request whose `User-Agent` the maintained Crawler-Detect list
  (`crawlerdetect` on PyPI) knows as a bot or crawler gets the GIF and produces nothing, sets no cookie.
- `GET /healthz` (broker reachable) and `GET /metrics` (Prometheus).

Every event is checked with `streams.core.events.validate` (the worker's own validator) and produced
as its original JSON object, keyed by tracking ID (spend: by channel), by one producer for the
whole process (acks=all; idempotent where the broker allows it).

The pure parts (`pixel_event`, `parse_batch`, `route_event`, `authorized`, ...) decide; the
handlers only move bytes. Logs carry no IPs, cookies or event contents: one line per state
change (started, producer mode, broker lost / back), never one per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import logging
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.protocol.metadata import MetadataRequest
from crawlerdetect import CrawlerDetect
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from streams.config import Settings
from streams.core.events import TOPIC_TYPES, validate
from streams.kafka.topics import ensure_topics, make_producer

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # the batch API's limit: a larger body is 413, nothing produced
MAX_PIXEL_BODY_BYTES = 16 * 1024  # a beacon carries a handful of short parameters
PIXEL_TYPES = ("impression", "click", "lead")
MONEY_TYPES = ("order", "spend", "refund")
TYPE_TOPICS: dict[str, str] = {kind: topic for topic, kind in TOPIC_TYPES.items()}
TID_COOKIE = "_tid"
# The tracking_id of a pixel event sent without consent: the schema wants one, the intake drops it, and no
# cookie or `tid` of the visitor may be written to the topics in its place.
NO_CONSENT_TID = "no-consent"
TID_COOKIE_MAX_AGE_S = 365 * 86_400
PRODUCE_TIMEOUT_S = 15.0
HEALTH_CACHE_S = 1.5
HEALTH_TIMEOUT_S = 2.0
PRODUCER_START_TIMEOUT_S = 15.0
# Answers wait for the ack, so linger is latency; batching happens anyway while a request is in flight.
PRODUCER_LINGER_MS = 1
# the classic transparent 1x1 GIF89a (43 bytes)
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_COOKIE_TID = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)

# pixel parameter -> contract field, per event type (anything else in the query is ignored)
PIXEL_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "impression": (("ch", "channel"), ("cmp", "campaign")),
    "click": (("ch", "channel"), ("cmp", "campaign"), ("aff", "affiliate_id")),
    "lead": (("cid", "customer_id"),),
}


# --- pure parts ------------------------------------------------------------------------------


def new_tracking_id() -> str:
    return uuid.uuid4().hex


def new_event_id() -> str:
    return str(uuid.uuid4())


def cookie_tracking_id(value: str | None) -> str | None:
    """The `_tid` cookie's value when it is a usable tracking ID, else None (a new one is issued)."""
    if value and _COOKIE_TID.match(value):
        return value
    return None


def consent_given(params: Mapping[str, str]) -> bool:
    """A pixel request's `consent` (or a /consent request's `given`): `0` or `false` refuses, anything else (or
    nothing) is consent."""
    value = params.get("consent", params.get("given", "")).strip().lower()
    return value not in ("0", "false")


def pixel_event(params: Mapping[str, str], tracking_id: str, now_ms: int, event_id: str) -> dict[str, Any] | str:
    """Pixel parameters -> the contract event object (CONTRACT.md section 2), or why it is refused.

    `tracking_id` is already resolved (parameter `tid`, cookie or new); `eid` and `ts` in the
    parameters win over `event_id` and `now_ms`. The result still needs `streams.core.events.validate`.
    """
    kind = (params.get("e") or "").strip()
    if kind in MONEY_TYPES:
        return (
            f"e={kind} is not accepted by the public pixel: orders, spend and refunds carry money and enter only "
            "through POST /v1/events with a write key, or straight on the topics"
        )
    if kind not in PIXEL_TYPES:
        if not kind:
            return "e (impression, click or lead) is required"
        return f"e must be impression, click or lead, got {kind!r}"
    event: dict[str, Any] = {
        "event_id": params.get("eid") or event_id,
        "type": kind,
        "ts": _pixel_ts(params.get("ts")) if params.get("ts") else now_ms,
        "tracking_id": tracking_id,
    }
    for name, field in PIXEL_FIELDS[kind]:
        value = params.get(name)
        if value:
            event[field] = value
    return event


def _pixel_ts(text: str) -> int | str:
    """`ts` from a query string: digits are epoch milliseconds, anything else an ISO-8601 string."""
    text = text.strip()
    return int(text) if text.isdigit() and len(text) <= 15 else text


def pixel_body_params(body: bytes, content_type: str) -> dict[str, str] | str:
    """A beacon body (form-encoded, text/plain `a=b&c=d`, or a JSON object) -> parameters."""
    text = body.strip()
    if not text:
        return {}
    if "json" in content_type or text.startswith(b"{"):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return f"body is not valid JSON: {exc}"
        if not isinstance(value, dict):
            return f"body must be a JSON object of pixel parameters, got {type(value).__name__}"
        return {str(k): v if isinstance(v, str) else orjson.dumps(v).decode()
                for k, v in value.items() if v is not None}
    try:
        return dict(parse_qsl(text.decode("utf-8"), keep_blank_values=False, strict_parsing=False))
    except UnicodeDecodeError:
        return "body is not UTF-8"


def parse_batch(body: bytes) -> list[Any] | str:
    """A batch body -> its event values: a JSON array, or JSON lines (one value per line).

    A body that is neither (or has a line that is not JSON) is refused as a whole: a framing
    error is the sender's bug, not one bad event.
    """
    text = body.strip()
    if text.startswith(b"\xef\xbb\xbf"):
        text = text[3:].strip()
    if not text:
        return "empty body: expected a JSON array of events or JSON lines (one event object per line)"
    if text.startswith(b"["):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return f"body is not valid JSON: {exc}"
        if not isinstance(value, list):  # pragma: no cover - a '[' always decodes to a list
            return "body must be a JSON array or JSON lines"
        return value
    values: list[Any] = []
    for number, line in enumerate(text.split(b"\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            values.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            return f"body is not a JSON array or JSON lines: line {number} is not valid JSON: {exc}"
    return values


def route_event(obj: Any, settings: Settings) -> tuple[str, bytes | None] | str:
    """One batch element -> (its topic, its message key), or why it is rejected."""
    if not isinstance(obj, dict):
        return f"expected an event object, got {type(obj).__name__}"
    kind = obj.get("type")
    if kind is None:
        return "missing required field(s): type"
    topic = TYPE_TOPICS.get(kind) if isinstance(kind, str) else None
    if topic is None:
        return f"type must be one of {', '.join(TYPE_TOPICS)}, got {orjson.dumps(kind).decode()[:60]}"
    result = validate(obj, topic, settings)
    if isinstance(result, str):
        return result
    return topic, message_key(obj)


def message_key(obj: Mapping[str, Any]) -> bytes | None:
    """Tracking ID when the event has one (spend: its channel)."""
    key = obj.get("tracking_id") or obj.get("channel")
    return key.encode() if isinstance(key, str) else None


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def authorized(header: str | None, keys: tuple[str, ...]) -> bool:
    """`Authorization: Bearer <key>` against the write keys, compared in constant time.

    Every configured key is compared (no early exit), so the time taken says nothing about
    which key came close. No keys configured: nothing is authorized.
    """
    token = bearer_token(header)
    if token is None or not keys:
        return False
    given = token.encode()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode())
    return ok


# --- metrics ---------------------------------------------------------------------------------


class CollectorMetrics:
    """The collector's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "collector_requests", "HTTP requests by route and status", ("route", "status"), registry=self.registry
        )
        self.produced = Counter(
            "collector_events_produced", "events acknowledged by Kafka, by type", ("type",), registry=self.registry
        )
        self.rejected = Counter(
            "collector_events_rejected", "events refused (invalid, or not allowed on the route)", ("route",),
            registry=self.registry,
        )
        self.bots = Counter(
            "attribution_collector_bots", "pixel requests from known bots and crawlers: answered, nothing produced",
            registry=self.registry,
        )
        self.produce_latency = Histogram(
            "collector_produce_latency_seconds", "time from handing a request's events to the producer to their acks",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )


# --- broker health ---------------------------------------------------------------------------


class BrokerHealth:
    """Is a bootstrap broker answering metadata? Checked at most every `cache_s`, by one caller at a time."""

    def __init__(self, bootstrap: str, cache_s: float = HEALTH_CACHE_S, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        self.hosts = [(host, port) for host, port, _ in collect_hosts(bootstrap)]
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._checked_at = float("-inf")
        self._ok: bool | None = None
        self._lock = asyncio.Lock()

    async def ok(self) -> bool:
        async with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= self.cache_s:
                ok = await self._check()
                self._checked_at = time.monotonic()
                if ok != self._ok and self._ok is not None:
                    if ok:
                        log.warning("broker reachable again")
                    else:
                        log.warning("broker unreachable at %s", ",".join(f"{h}:{p}" for h, p in self.hosts))
                self._ok = ok
            return bool(self._ok)

    async def _check(self) -> bool:
        for host, port in self.hosts:
            try:
                async with asyncio.timeout(self.timeout_s):
                    conn = await create_conn(host, port, request_timeout_ms=int(self.timeout_s * 1000))
                    try:
                        metadata = await conn.send(MetadataRequest([]))
                    finally:
                        conn.close()
            except (OSError, KafkaError, TimeoutError):
                continue
            if metadata.brokers:
                return True
        return False


# --- the app ---------------------------------------------------------------------------------

HEALTH_KEY = web.AppKey("health", BrokerHealth)
METRICS_KEY = web.AppKey("metrics", CollectorMetrics)


def build_app(
    settings: Settings,
    producer: AIOKafkaProducer,
    *,
    bootstrap: str | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The collector's aiohttp app, producing with `producer` (started and stopped by the caller).

    `bootstrap` is what /healthz checks (default: `settings.kafka_bootstrap`, else the producer's).
    """
    metrics = CollectorMetrics(registry)
    health = BrokerHealth(bootstrap or settings.kafka_bootstrap or _producer_bootstrap(producer))
    sink = _Sink(producer, metrics)
    keys = settings.collector_keys
    crawlers = CrawlerDetect()  # its own cache of user agents already judged

    async def pixel(request: web.Request) -> web.StreamResponse:
        if crawlers.is_crawler(request.headers.get("User-Agent", "")):
            metrics.bots.inc()
            return _gif()
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            body = await _read_limited(request, MAX_PIXEL_BODY_BYTES)
            if body is None:
                return _error(413, f"beacon body over {MAX_PIXEL_BODY_BYTES} bytes")
            extra = pixel_body_params(body, request.content_type)
            if isinstance(extra, str):
                metrics.rejected.labels("px").inc()
                return _error(400, extra)
            params.update(extra)
        consented = consent_given(params)
        tid = (params.get("tid") or None) if consented else NO_CONSENT_TID
        new_cookie = None
        if tid is None:
            tid = cookie_tracking_id(request.cookies.get(TID_COOKIE))
            if tid is None:
                tid = new_cookie = new_tracking_id()
        event = pixel_event(params, tid, int(time.time() * 1000), new_event_id())
        if isinstance(event, dict) and not consented:
            event["consent"] = False
        if isinstance(event, dict):
            checked = validate(event, TYPE_TOPICS[event["type"]], settings)
            if isinstance(checked, str):
                event = checked
        if isinstance(event, str):
            metrics.rejected.labels("px").inc()
            return _error(400, event)
        failure = await sink.produce([(TYPE_TOPICS[event["type"]], tid.encode(), event)])
        if failure:
            return _error(503, failure)
        response = _gif()
        if new_cookie is not None:
            response.set_cookie(
                TID_COOKIE, new_cookie, max_age=TID_COOKIE_MAX_AGE_S, path="/", httponly=True, samesite="Lax",
                secure=_is_https(request) or None,
            )
        if not consented and TID_COOKIE in request.cookies:
            response.del_cookie(TID_COOKIE, path="/")
        return response

    async def consent(request: web.Request) -> web.StreamResponse:
        """`attribution.consent(false)`: the visitor's `_tid` cookie goes (it is HttpOnly: only we can)."""
        response = web.Response(body=GIF, content_type="image/gif")
        response.headers["Cache-Control"] = "no-store"
        if not consent_given(dict(request.query)) and TID_COOKIE in request.cookies:
            response.del_cookie(TID_COOKIE, path="/")
        return response

    async def batch(request: web.Request) -> web.StreamResponse:
        # the key is checked before a byte of the body is read
        if not keys:
            return _unauthorized("the batch API is closed: no write keys are configured (COLLECTOR_KEYS)")
        if not authorized(request.headers.get("Authorization"), keys):
            if bearer_token(request.headers.get("Authorization")) is None:
                return _unauthorized("missing write key: send Authorization: Bearer <write key>")
            return _unauthorized("wrong write key")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _too_large()
        body = await _read_limited(request, MAX_BODY_BYTES)
        if body is None:
            return _too_large()
        values = parse_batch(body)
        if isinstance(values, str):
            return _error(400, values)
        rejected: list[dict[str, Any]] = []
        accepted: list[tuple[str, bytes | None, Any]] = []
        for index, obj in enumerate(values):
            routed = route_event(obj, settings)
            if isinstance(routed, str):
                rejected.append({"index": index, "error": routed})
            else:
                accepted.append((routed[0], routed[1], obj))
        if rejected:
            metrics.rejected.labels("events").inc(len(rejected))
        failure = await sink.produce(accepted)
        if failure:
            return _error(503, failure + "; nothing can be assumed delivered: send the batch again "
                          "(repeated event_ids are counted once)")
        return web.json_response({"accepted": len(accepted), "rejected": rejected}, status=202, dumps=_dumps)

    async def healthz(request: web.Request) -> web.StreamResponse:
        if await health.ok():
            return web.json_response({"status": "ok"}, dumps=_dumps)
        return web.json_response({"status": "unavailable", "error": "Kafka broker unreachable"}, status=503,
                                 dumps=_dumps)

    async def prometheus(request: web.Request) -> web.StreamResponse:
        response = web.Response(body=generate_latest(metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application(middlewares=[_count_requests(metrics)], client_max_size=MAX_BODY_BYTES)
    app[HEALTH_KEY] = health
    app[METRICS_KEY] = metrics
    app.router.add_route("GET", "/px", pixel, name="px")
    app.router.add_route("POST", "/px", pixel, name="px_beacon")
    app.router.add_route("GET", "/consent", consent, name="consent")
    app.router.add_route("POST", "/v1/events", batch, name="events")
    app.router.add_route("GET", "/healthz", healthz, name="healthz")
    app.router.add_route("GET", "/metrics", prometheus, name="metrics")
    return app


class _Sink:
    """Hands events to the one producer and waits for their acks; logs when producing starts/stops failing."""

    def __init__(self, producer: AIOKafkaProducer, metrics: CollectorMetrics) -> None:
        self.producer = producer
        self.metrics = metrics
        self.failing = False

    async def produce(self, events: list[tuple[str, bytes | None, Any]]) -> str | None:
        """Produce (topic, key, event object) and wait for every ack; None, or what went wrong."""
        if not events:
            return None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(PRODUCE_TIMEOUT_S):
                futures = [
                    await self.producer.send(topic, orjson.dumps(obj), key=key) for topic, key, obj in events
                ]
                await asyncio.gather(*futures)
        except (KafkaError, TimeoutError) as exc:
            reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            if not self.failing:
                self.failing = True
                log.warning("producing to Kafka failed (%s); answering 503 until it works again", reason)
            return f"could not write to Kafka: {reason}"
        self.metrics.produce_latency.observe(time.perf_counter() - started)
        for _, _, obj in events:
            self.metrics.produced.labels(obj["type"]).inc()
        if self.failing:
            self.failing = False
            log.warning("producing to Kafka works again")
        return None


def _count_requests(metrics: CollectorMetrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        route = request.match_info.route.name or "unmatched"
        route = "px" if route == "px_beacon" else route
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            metrics.requests.labels(route, str(exc.status)).inc()
            raise
        except Exception:
            metrics.requests.labels(route, "500").inc()
            raise
        metrics.requests.labels(route, str(response.status)).inc()
        return response

    return middleware


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it passes `limit` bytes (chunked bodies included)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _gif() -> web.Response:
    response = web.Response(body=GIF, content_type="image/gif")
    response.headers["Cache-Control"] = "no-store, no-cache, must-revalidate, max-age=0"
    response.headers["Pragma"] = "no-cache"
    return response


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, dumps=_dumps)


def _unauthorized(message: str) -> web.Response:
    response = _error(401, message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="attribution collector"'
    return response


def _too_large() -> web.Response:
    response = _error(413, f"body over {MAX_BODY_BYTES} bytes (1 MiB): split the batch")
    response.force_close()  # the rest of the body is not read
    return response


def _is_https(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _producer_bootstrap(producer: AIOKafkaProducer) -> str:
    return ",".join(f"{host}:{port}" for host, port, _ in producer.client.hosts)


# --- the command -----------------------------------------------------------------------------


async def start_producer(bootstrap: str, linger_ms: int = PRODUCER_LINGER_MS) -> tuple[AIOKafkaProducer, bool]:
    """The process's one producer: idempotent, or plain (with a warning) where the broker refuses that.

    Returns the started producer and whether it is idempotent. An unreachable broker raises.
    """
    producer = make_producer(bootstrap, idempotent=True, linger_ms=linger_ms)
    try:
        async with asyncio.timeout(PRODUCER_START_TIMEOUT_S):
            await producer.start()
        return producer, True
    except KafkaConnectionError:
        await producer.stop()
        raise
    except (KafkaError, TimeoutError) as exc:
        await producer.stop()
        log.warning(
            "the broker at %s refused an idempotent producer (%s): using a plain acks=all producer; "
            "a retried send may then write an event twice (the worker drops repeated event_ids)",
            bootstrap, type(exc).__name__,
        )
    producer = make_producer(bootstrap, idempotent=False, linger_ms=linger_ms)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer, False


def run(settings: Settings, args: argparse.Namespace | None = None) -> int:
    """`attribution collect`: serve until SIGINT/SIGTERM; the exit status."""
    _configure_logging(settings)
    from streams.kafka.embedded_broker import EmbeddedBrokerError, resolve_bootstrap

    try:
        bootstrap, broker = resolve_bootstrap(settings)
    except EmbeddedBrokerError as exc:
        log.error("%s", exc)
        return 1
    try:
        return asyncio.run(_serve(settings, bootstrap))
    finally:
        if broker is not None:
            broker.stop()


async def _serve(settings: Settings, bootstrap: str) -> int:
    try:
        await ensure_topics(bootstrap, settings)
        producer, idempotent = await start_producer(bootstrap)
    except (KafkaError, OSError, TimeoutError) as exc:
        log.error("cannot reach Kafka at %s: %s", bootstrap, exc)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(build_app(settings, producer, bootstrap=bootstrap), access_log=None,
                           handle_signals=False)
    try:
        await runner.setup()
        site = web.TCPSite(runner, port=settings.collector_port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            log.error("cannot listen on port %s: %s", settings.collector_port, exc)
            return 1
        log.info(
            "collector listening on port %s, producing to %s (%s producer, acks=all)",
            settings.collector_port, bootstrap, "idempotent" if idempotent else "non-idempotent",
        )
        await stop.wait()
        log.info("collector stopping")
    finally:
        await runner.cleanup()  # stops accepting, lets in-flight requests finish
        await producer.stop()  # flushes what is still buffered
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("collector stopped")
    return 0


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(settings.log_level)
    # state changes of the collector itself are few and wanted; aiohttp's access log would log IPs
    log.setLevel(min(logging.INFO, logging.getLevelName(settings.log_level)))
    logging.getLogger("aiohttp.access").disabled = True
