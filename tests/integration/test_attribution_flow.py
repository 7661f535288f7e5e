"""Attribution end to end (CONTRACT.md section 3): real Apache Kafka, real Redis, a real worker.

Each test sends one visitor's journey to the input topics (event times in the recent past, keyed
by tracking ID so that one visitor's events of a topic stay in order) and checks the message the
worker put on `attributions` field by field, for the configured model and for all five models.
The worker runs with short lookbacks (clicks 3 minutes, views 90 seconds), a one-minute
time-decay half-life and a one-second grace, on a broker of this module's own.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.services import KafkaBroker, WorkerProcess, consume_all, produce

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("last_click", "first_click", "linear", "time_decay", "position_based")
HALF_LIFE_S = 60.0
WAIT_S = 45.0
S = 1_000  # ms per second
ANNA = {"affiliate_id": "anna_fit", "channel": "influencer", "promo_codes": ["ANNA10"],
        "commission_rate": 0.10, "assist_fee": 2.0}
BOB = {"affiliate_id": "bob_deals", "channel": "affiliate", "promo_codes": ["BOB5"],
       "commission_rate": 0.05, "assist_fee": 3.0}
validate_attribution = fastjsonschema.compile(orjson.loads((ROOT / "schemas" / "attribution.json").read_bytes()))


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(kafka_broker_factory: Callable[[], KafkaBroker]) -> Iterator[KafkaBroker]:
    started = kafka_broker_factory()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def worker(broker: KafkaBroker, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    env = {
        "REDIS_URL": redis_url,
        "TOPIC_PARTITIONS": "4",
        "CLICK_LOOKBACK": "3m",
        "VIEW_LOOKBACK": "90s",
        "TIME_DECAY_HALF_LIFE": "1m",
        "ATTRIBUTION_GRACE": "1s",
        "FX_RATES": "EUR=1.1",
    }
    process = WorkerProcess(env, bootstrap=broker.bootstrap, log_dir=tmp_path_factory.mktemp("attribution-worker"),
                            name="attribution-worker").start()
    try:
        process.wait_http("/metrics", timeout=90)
        yield process
    finally:
        process.stop(timeout=15)
        print(f"--- {process.name} log ---\n{process.tail(60)}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def affiliates(broker: KafkaBroker, worker: WorkerProcess) -> dict[str, dict[str, Any]]:
    """Anna (influencer, code ANNA10) and Bob (affiliate) on the compacted `affiliates` topic, key = affiliate_id."""
    for record in (ANNA, BOB):
        await produce(broker.bootstrap, "affiliates", [orjson.dumps(record)], key=record["affiliate_id"].encode())
    await asyncio.sleep(1.5)  # the worker follows the topic; the grace gives it more time still
    return {"anna": ANNA, "bob": BOB}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def producer(broker: KafkaBroker) -> AsyncIterator[AIOKafkaProducer]:
    started = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
    await started.start()
    yield started
    await started.stop()


# --- helpers -------------------------------------------------------------------------------------------


def uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def now_ms() -> int:
    return int(time.time() * 1000)


def touch(kind: str, tid: str, ts: int, channel: str, campaign: str | None = None, **extra: Any) -> dict[str, Any]:
    event = {"event_id": uid(kind), "type": kind, "ts": ts, "tracking_id": tid, "channel": channel, **extra}
    if campaign is not None:
        event["campaign"] = campaign
    return event


def order(tid: str, ts: int, revenue: float, **extra: Any) -> dict[str, Any]:
    return {"event_id": uid("order"), "type": "order", "ts": ts, "tracking_id": tid, "order_id": uid("oid"),
            "revenue": revenue, **extra}


def lead(tid: str, ts: int, **extra: Any) -> dict[str, Any]:
    return {"event_id": uid("lead"), "type": "lead", "ts": ts, "tracking_id": tid, **extra}


TOPICS = {"impression": "impressions", "click": "clicks", "lead": "leads", "order": "orders"}


async def send(producer: AIOKafkaProducer, *events: dict[str, Any]) -> None:
    """Each event to its type's topic, keyed by its tracking ID, in the order given per topic."""
    sent = [
        await producer.send(TOPICS[event["type"]], orjson.dumps(event), key=event["tracking_id"].encode())
        for event in events
    ]
    await asyncio.gather(*sent)


async def attributions(bootstrap: str, *conversion_ids: str, settle_s: float = 0.0) -> dict[str, list[dict]]:
    """Every `attributions` message per key, once all the given keys are there (and `settle_s` later)."""
    wanted = set(conversion_ids)

    def has_all(records: list[Any]) -> bool:
        return wanted <= {r.key.decode() for r in records}

    records = await consume_all(bootstrap, "attributions", until=has_all, timeout=WAIT_S)
    assert has_all(records), f"no attribution for {sorted(wanted - {r.key.decode() for r in records})}"
    if settle_s:
        await asyncio.sleep(settle_s)
        records = await consume_all(bootstrap, "attributions", timeout=15)
    out: dict[str, list[dict]] = {}
    for record in records:
        out.setdefault(record.key.decode(), []).append(orjson.loads(record.value))
    return out


Credit = tuple[str, str, str | None]  # channel, campaign, affiliate_id


def credits_of(items: list[dict[str, Any]]) -> dict[Credit, tuple[float, float]]:
    out: dict[Credit, tuple[float, float]] = {}
    for item in items:
        key = (item["channel"], item["campaign"], item["affiliate_id"])
        assert key not in out, f"{key} credited twice in {items}"
        if item["weight"] > 0:
            out[key] = (item["weight"], item["revenue"])
    return out


def expect(path: list[Credit], weights: list[float], revenue: float) -> dict[Credit, tuple[float, float]]:
    """Touchpoint weights (in journey order) merged per (channel, campaign, affiliate)."""
    merged: Counter = Counter()
    for credit, weight in zip(path, weights, strict=True):
        merged[credit] += weight
    return {credit: (weight, weight * revenue) for credit, weight in merged.items() if weight > 0}


def decay(ages_s: list[float]) -> list[float]:
    raw = [2 ** (-age / HALF_LIFE_S) for age in ages_s]
    return [w / sum(raw) for w in raw]


def assert_credits(actual: list[dict[str, Any]], expected: dict[Credit, tuple[float, float]], what: str) -> None:
    got = credits_of(actual)
    assert set(got) == set(expected), f"{what}: credited {sorted(got, key=str)}, expected {sorted(expected, key=str)}"
    for key, (weight, revenue) in expected.items():
        assert got[key][0] == pytest.approx(weight, abs=1e-9), f"{what}: weight of {key}"
        assert got[key][1] == pytest.approx(revenue, abs=1e-6), f"{what}: revenue of {key}"
    assert sum(item["weight"] for item in actual) == pytest.approx(1.0)


def assert_message(message: dict[str, Any], conversion: dict[str, Any], revenue: float,
                   models: dict[str, dict[Credit, tuple[float, float]]], commissions: list[tuple[str, str, float]]
                   ) -> None:
    validate_attribution(message)
    assert message["conversion_id"] == conversion["event_id"]
    assert message["type"] == conversion["type"]
    assert message["tracking_id"] == conversion["tracking_id"]
    assert message["ts"] == conversion["ts"]
    assert message["revenue"] == pytest.approx(revenue)
    assert message["currency"] == "USD"
    assert message["model"] == "last_click"
    assert_credits(message["credits"], models["last_click"], "credits")
    assert set(message["models"]) == {*MODELS, "markov"}
    for model in MODELS:
        assert_credits(message["models"][model], models[model], model)
    # the data-driven credit depends on the paths seen so far (tests/integration/test_markov_flow.py): it sums
    # to 1 over channels of the journey
    markov = message["models"]["markov"]
    assert sum(c["weight"] for c in markov) == pytest.approx(1.0)
    assert {c["channel"] for c in markov} <= {c["channel"] for c in message["models"]["linear"]}
    got = sorted((c["affiliate_id"], c["role"], round(c["amount"], 6)) for c in message["commissions"])
    assert got == sorted((a, role, round(amount, 6)) for a, role, amount in commissions)


def scrape(worker: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def latest_per_window(records: list[Any]) -> dict[tuple[str, int], dict[str, Any]]:
    latest = {}
    for record in records:  # in offset order per partition, and a key stays on one partition
        message = orjson.loads(record.value)
        latest[record.key.decode(), message["window_start"]] = message
    return latest


# --- tests -------------------------------------------------------------------------------------------------


async def test_touchpoints_inside_the_lookbacks_are_credited_by_every_model(
    broker: KafkaBroker, worker: WorkerProcess, producer: AIOKafkaProducer
) -> None:
    tid, t = uid("visitor"), now_ms() - 30 * S
    events = [
        touch("click", tid, t - 200 * S, "google_ads", "brand"),  # older than CLICK_LOOKBACK (3m)
        touch("impression", tid, t - 100 * S, "facebook", "retarget"),  # older than VIEW_LOOKBACK (90s)
        touch("click", tid, t - 170 * S, "google_ads", "generic"),
        touch("impression", tid, t - 60 * S, "tiktok", "ugc"),
        touch("click", tid, t - 30 * S, "email", "newsletter"),
        touch("impression", tid, t - 10 * S, "display"),  # no campaign: (none)
        touch("click", tid, t + 5 * S, "bing", "late"),  # after the conversion
    ]
    conversion = order(tid, t, 120.0)
    await send(producer, *events, conversion)

    (message,) = (await attributions(broker.bootstrap, conversion["event_id"]))[conversion["event_id"]]

    path = [("google_ads", "generic", None), ("tiktok", "ugc", None), ("email", "newsletter", None),
            ("display", "(none)", None)]
    assert_message(message, conversion, 120.0, {
        "last_click": expect(path, [0, 0, 1, 0], 120.0),
        "first_click": expect(path, [1, 0, 0, 0], 120.0),
        "linear": expect(path, [0.25] * 4, 120.0),
        "time_decay": expect(path, decay([170, 60, 30, 10]), 120.0),
        "position_based": expect(path, [0.4, 0.1, 0.1, 0.4], 120.0),
    }, [])
    assert message["new_customer"] is False  # no customer_id: never new


async def test_a_touchpoint_that_arrives_just_after_its_conversion_still_counts(
    broker: KafkaBroker, worker: WorkerProcess, producer: AIOKafkaProducer
) -> None:
    tid, t = uid("visitor"), now_ms() - 20 * S
    conversion = lead(tid, t)
    click = touch("click", tid, t - 5 * S, "facebook", "prospecting")
    await producer.send_and_wait("leads", orjson.dumps(conversion), key=tid.encode())
    await asyncio.sleep(0.3)  # the click comes later, on another topic, though its ts is earlier
    await producer.send_and_wait("clicks", orjson.dumps(click), key=tid.encode())

    (message,) = (await attributions(broker.bootstrap, conversion["event_id"]))[conversion["event_id"]]

    only = {("facebook", "prospecting", None): (1.0, 0.0)}
    assert_message(message, conversion, 0.0, dict.fromkeys(MODELS, only), [])


async def test_a_conversion_without_touchpoints_is_direct(
    broker: KafkaBroker, worker: WorkerProcess, producer: AIOKafkaProducer
) -> None:
    tid, t = uid("visitor"), now_ms() - 15 * S
    conversion = lead(tid, t)
    await send(producer, conversion)

    (message,) = (await attributions(broker.bootstrap, conversion["event_id"]))[conversion["event_id"]]

    direct = {("(direct)", "(none)", None): (1.0, 0.0)}
    assert_message(message, conversion, 0.0, dict.fromkeys(MODELS, direct), [])


async def test_a_promo_code_order_goes_to_its_affiliate_and_pays_commissions(
    broker: KafkaBroker, worker: WorkerProcess, producer: AIOKafkaProducer, affiliates: dict[str, dict[str, Any]]
) -> None:
    tid, t = uid("visitor"), now_ms() - 25 * S
    events = [
        touch("impression", tid, t - 40 * S, "youtube", "launch"),
        touch("click", tid, t - 20 * S, "affiliate", "deals", affiliate_id="bob_deals"),
    ]
    conversion = order(tid, t, 100.0, currency="EUR", promo_code="ANNA10")  # 110 USD at EUR=1.1
    await send(producer, *events, conversion)

    (message,) = (await attributions(broker.bootstrap, conversion["event_id"]))[conversion["event_id"]]

    path = [("youtube", "launch", None), ("affiliate", "deals", "bob_deals"), ("influencer", "(none)", "anna_fit")]
    assert_message(message, conversion, 110.0, {
        "last_click": expect(path, [0, 0, 1], 110.0),
        "first_click": expect(path, [0, 1, 0], 110.0),
        "linear": expect(path, [1 / 3] * 3, 110.0),
        "time_decay": expect(path, decay([40, 20, 0]), 110.0),
        "position_based": expect(path, [0.4, 0.2, 0.4], 110.0),
    }, [("anna_fit", "converter", 11.0), ("bob_deals", "assist", 3.0)])


async def test_a_returning_customer_on_another_tracking_id_is_not_new(
    broker: KafkaBroker, worker: WorkerProcess, producer: AIOKafkaProducer
) -> None:
    customer, t = uid("customer"), now_ms() - 40 * S
    first_tid, second_tid = uid("visitor"), uid("visitor")
    signup = lead(first_tid, t - 5 * S, customer_id=customer)  # a lead does not make a customer
    first = order(first_tid, t, 80.0, customer_id=customer, margin=0.5)
    await send(producer, touch("click", first_tid, t - 10 * S, "google_ads", "brand"), signup, first)
    (first_message,) = (await attributions(broker.bootstrap, first["event_id"]))[first["event_id"]]

    second = order(second_tid, t + 30 * S, 40.0, customer_id=customer)
    await send(producer, touch("click", second_tid, t + 20 * S, "facebook", "retarget"), second)
    (second_message,) = (await attributions(broker.bootstrap, second["event_id"]))[second["event_id"]]

    assert first_message["new_customer"] is True
    assert second_message["new_customer"] is False
    assert_credits(second_message["credits"], {("facebook", "retarget", None): (1.0, 40.0)}, "second order")

    def new_customers(records: list[Any]) -> float:
        return sum(m["new_customers"] for m in latest_per_window(records).values())

    records = await consume_all(broker.bootstrap, "metrics.channel", until=lambda rs: new_customers(rs) >= 1,
                                timeout=WAIT_S)
    await asyncio.sleep(2.0)  # metrics are published about once a second: a second count would show by now
    records = await consume_all(broker.bootstrap, "metrics.channel", timeout=15)
    latest = latest_per_window(records)
    counted = {key: m["new_customers"] for key, m in latest.items() if m["new_customers"]}
    assert counted == {("google_ads", t - t % 60_000): pytest.approx(1.0)}
    samples = scrape(worker)
    prometheus = {dict(labels)["channel"]: value for (name, labels), value in samples.items()
                  if name == "attribution_new_customers_total" and value}
    assert prometheus == {"google_ads": pytest.approx(1.0)}


async def test_a_repeated_order_id_is_attributed_once(
    broker: KafkaBroker, worker: WorkerProcess, producer: AIOKafkaProducer
) -> None:
    tid, t = uid("visitor"), now_ms() - 20 * S
    conversion = order(tid, t, 60.0)
    reload = {**conversion, "event_id": uid("order"), "ts": t + 1 * S}  # same order_id, another event_id
    await send(producer, touch("click", tid, t - 5 * S, "bing", "brand"), conversion, reload, conversion)

    found = await attributions(broker.bootstrap, conversion["event_id"], settle_s=2.0)

    assert len(found[conversion["event_id"]]) == 1
    assert reload["event_id"] not in found
    assert_message(found[conversion["event_id"]][0], conversion, 60.0,
                   dict.fromkeys(MODELS, {("bing", "brand", None): (1.0, 60.0)}), [])
    samples = scrape(worker)
    assert samples[("attribution_events_total", (("outcome", "duplicate"), ("type", "order")))] == 2


async def test_a_repeated_order_id_on_another_tracking_id_is_a_duplicate_too(
    broker: KafkaBroker, worker: WorkerProcess, producer: AIOKafkaProducer
) -> None:
    """CONTRACT.md section 2: a second order with the same order_id within DEDUP_WINDOW is a duplicate,
    whatever its event_id; the rule does not depend on the tracking ID the order carries."""
    tid, other_tid, t = uid("visitor"), uid("visitor"), now_ms() - 20 * S
    conversion = order(tid, t, 70.0)
    await send(producer, touch("click", tid, t - 5 * S, "bing", "generic"), conversion)
    await attributions(broker.bootstrap, conversion["event_id"])
    duplicates_before = scrape(worker).get(("attribution_events_total", (("outcome", "duplicate"), ("type", "order"))))

    again = {**conversion, "event_id": uid("order"), "tracking_id": other_tid}  # e.g. a second device's cookie
    await send(producer, again)
    found = await attributions(broker.bootstrap, conversion["event_id"], settle_s=2.0)

    assert again["event_id"] not in found, "the same order_id was attributed twice"
    duplicates = scrape(worker).get(("attribution_events_total", (("outcome", "duplicate"), ("type", "order"))))
    assert (duplicates or 0) == (duplicates_before or 0) + 1


# --- heavy keys: one journey-table row must never outgrow Kafka's 1 MiB message limit ---------------------

SPEND_ROWS = 30_000  # one row per channel of these ids made a 1.1 MB changelog value: the worker crash-looped
HOT_CLICKS = 12_000  # a bot or a shared cookie: every click on one tracking ID


def spend_of(channel: str, samples: dict) -> float:
    return sum(v for (name, labels), v in samples.items()
               if name == "attribution_spend_total" and dict(labels)["channel"] == channel)


async def test_a_channels_many_spend_rows_and_a_hot_tracking_id_do_not_crash_the_worker(
    broker: KafkaBroker, worker: WorkerProcess, producer: AIOKafkaProducer
) -> None:
    channel, t = uid("bulk_spend"), now_ms() - 20 * S
    spend = [{"event_id": uid("spend"), "type": "spend", "ts": t - i % 10_000, "channel": channel,
              "campaign": "always_on", "amount": 0.25} for i in range(SPEND_ROWS)]
    for start in range(0, SPEND_ROWS, 500):  # JSON arrays, as an ad platform's export would send them
        await producer.send("spend", orjson.dumps(spend[start:start + 500]), key=channel.encode())
    hot = uid("bot")
    clicks = [touch("click", hot, t - HOT_CLICKS + i, "display", f"c{i % 7}") for i in range(HOT_CLICKS)]
    clicks[-1]["channel"], clicks[-1]["campaign"] = "bing", "latest"
    for start in range(0, HOT_CLICKS, 500):
        await producer.send("clicks", orjson.dumps(clicks[start:start + 500]), key=hot.encode())
    await producer.flush()
    conversion = order(hot, t + 1, 40.0)
    await send(producer, conversion)

    found = await attributions(broker.bootstrap, conversion["event_id"])

    assert worker.alive, worker.tail(40)
    assert [(c["channel"], c["campaign"], c["weight"]) for c in found[conversion["event_id"]][0]["credits"]] == [
        ("bing", "latest", 1.0)]
    deadline = time.monotonic() + WAIT_S
    while spend_of(channel, scrape(worker)) < SPEND_ROWS * 0.25 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert spend_of(channel, scrape(worker)) == pytest.approx(SPEND_ROWS * 0.25)
    assert "MessageSizeTooLarge" not in worker.tail(400)
