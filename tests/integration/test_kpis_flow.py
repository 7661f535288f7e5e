"""Live KPIs end to end (CONTRACT.md sections 4 and 6): real Apache Kafka, real Redis, real workers.

Two workers share four partitions of a broker of their own. A seeded synthetic campaign with
event times spread over the last five minutes goes to the input topics; the test computes its
figures per channel, campaign and 60-second window independently (last click, the default
model) and compares them with the latest message per key and window on `metrics.channel` and
`metrics.campaign`, with the Prometheus counters of both workers summed, and with the read API.

A second broker and worker, with short lookbacks and ALLOWED_LATENESS=10s, check what happens when
event time moves on: a closed window gets a `final: true` message, a late event changes nothing and
counts as `late`, and journeys older than the lookback leave the table.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import pytest
import pytest_asyncio
from aiokafka.partitioner import murmur2
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.services import KafkaBroker, WorkerProcess, consume_all, produce

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
WINDOW_MS = 60_000
S = 1_000
FIGURES = ("impressions", "clicks", "leads", "orders", "new_customers", "revenue", "spend", "gross_profit")
COUNTERS = {  # Prometheus counter -> figure
    "attribution_impressions_total": "impressions",
    "attribution_clicks_total": "clicks",
    "attribution_leads_total": "leads",
    "attribution_orders_total": "orders",
    "attribution_new_customers_total": "new_customers",
    "attribution_revenue_total": "revenue",
    "attribution_spend_total": "spend",
    "attribution_gross_profit_total": "gross_profit",
}
CAMPAIGNS = {"google_ads": ("brand", "generic"), "facebook": ("prospecting", "retarget"), "email": ("(none)",)}
TOPICS = {"impression": "impressions", "click": "clicks", "lead": "leads", "order": "orders", "spend": "spend"}
EUR = 1.1
validate_metrics = fastjsonschema.compile(orjson.loads((ROOT / "schemas" / "metrics.json").read_bytes()))


# --- helpers -------------------------------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def window_of(ts: int) -> int:
    return ts - ts % WINDOW_MS


def partition_of(key: str) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def http_get(worker: WorkerProcess, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}{path}", timeout=5) as response:  # noqa: S310
        return response.read()


def scrape(worker: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(http_get(worker, "/metrics").decode())
        for sample in family.samples
    }


def by_channel(samples: dict, name: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (sample, labels), value in samples.items():
        if sample == name:
            out[dict(labels)["channel"]] += value
    return out


def events_total(samples: dict, outcome: str) -> Counter:
    out: Counter = Counter()
    for (sample, labels), value in samples.items():
        if sample == "attribution_events_total" and dict(labels)["outcome"] == outcome:
            out[dict(labels)["type"]] += value
    return out


def state(worker: WorkerProcess) -> dict[str, Any]:
    return orjson.loads(http_get(worker, "/api/v1/state"))


def start_worker(bootstrap: str, env: dict[str, str], log_dir: Path, name: str) -> WorkerProcess:
    return WorkerProcess(env, bootstrap=bootstrap, log_dir=log_dir, name=name).start()


def stop_workers(*workers: WorkerProcess) -> None:
    for worker in workers:  # SIGTERM to all first: they shut down side by side
        if worker.alive and worker.process is not None:
            worker.process.terminate()
    for worker in workers:
        worker.stop(timeout=15)
        print(f"--- {worker.name} log ---\n{worker.tail(60)}")


async def poll(check: Callable[[], Any], timeout: float) -> Any:
    """Call `check` (sync or async) until it returns something true or `timeout` passes; return its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.5)


async def send_events(bootstrap: str, events: list[dict[str, Any]]) -> None:
    """Touchpoints first, then spend, then conversions: each topic's events in one go."""
    by_topic: dict[str, list[bytes]] = defaultdict(list)
    for event in events:
        by_topic[TOPICS[event["type"]]].append(orjson.dumps(event))
    for topic in ("impressions", "clicks", "spend", "leads", "orders"):
        if by_topic[topic]:
            await produce(bootstrap, topic, by_topic[topic])


def latest(records: list[Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """The latest message per (key, window): a later one replaces the earlier (a key stays on one partition)."""
    out = {}
    for record in records:
        message = orjson.loads(record.value)
        out[record.key.decode(), message["window_start"]] = message
    return out


def figures_differ(actual: dict[str, Any], expected: dict[str, float]) -> list[str]:
    return [
        f"{name}: {actual.get(name)} != {expected[name]}"
        for name in FIGURES
        if actual.get(name) != pytest.approx(expected[name], rel=1e-9, abs=1e-6)
    ]


def compare(latest_messages: dict[tuple[str, int], dict[str, Any]], truth: dict[tuple[str, int], dict[str, float]]
            ) -> list[str]:
    problems = [f"{key}: no message" for key in truth if key not in latest_messages]
    problems += [f"{key}: unexpected message {latest_messages[key]}" for key in latest_messages if key not in truth]
    for key in truth.keys() & latest_messages.keys():
        problems += [f"{key} {diff}" for diff in figures_differ(latest_messages[key], truth[key])]
    return problems


def expected_ratio(numerator: float, denominator: float, scale: float = 1.0) -> float | None:
    return None if denominator == 0 else scale * numerator / denominator


def assert_ratios(message: dict[str, Any]) -> None:
    m = message
    expected = {
        "ctr": expected_ratio(m["clicks"], m["impressions"]),
        "cpc": expected_ratio(m["spend"], m["clicks"]),
        "cpm": expected_ratio(m["spend"], m["impressions"], 1000.0),
        "cpl": expected_ratio(m["spend"], m["leads"]),
        "cpa": expected_ratio(m["spend"], m["orders"]),
        "cac": expected_ratio(m["spend"], m["new_customers"]),
        "conversion_rate": expected_ratio(m["orders"], m["clicks"]),
        "aov": expected_ratio(m["revenue"], m["orders"]),
        "roas": expected_ratio(m["revenue"], m["spend"]),
        "roi": expected_ratio(m["revenue"] - m["spend"], m["spend"]),
        "romi": expected_ratio(m["gross_profit"] - m["spend"], m["spend"]),
    }
    for name, value in expected.items():
        if value is None:
            assert m[name] is None, f"{name} must be null on a 0 denominator: {m}"
        else:
            assert m[name] == pytest.approx(value, rel=1e-9, abs=1e-9), f"{name} of {m}"


# --- the campaign and its truth --------------------------------------------------------------------------


class Campaign:
    """A seeded synthetic campaign over the last ~5 minutes and its figures, computed here."""

    def __init__(self, seed: int, now: int, visitors: int = 150) -> None:
        rng = random.Random(seed)
        run = uuid.uuid4().hex[:8]
        self.events: list[dict[str, Any]] = []
        self.credit: dict[str, tuple[str, str]] = {}  # conversion event_id -> (channel, campaign) of its last click
        self.touches: dict[str, list[tuple[int, str, str, str]]] = {}  # tracking ID -> (ts, type, channel, campaign)
        self.channel: dict[tuple[str, int], dict[str, float]] = defaultdict(lambda: dict.fromkeys(FIGURES, 0.0))
        self.campaign: dict[tuple[str, int], dict[str, float]] = defaultdict(lambda: dict.fromkeys(FIGURES, 0.0))
        pairs = [(channel, campaign) for channel, campaigns in CAMPAIGNS.items() for campaign in campaigns]
        start, end = now - 290 * S, now - 5 * S
        for v in range(visitors):
            tid = f"{run}-v{v}"
            ts = rng.randint(start, end - 20 * S)
            touches = []
            for k in range(rng.choice((0, 1, 1, 2, 3))):
                kind = "click" if rng.random() < 0.4 else "impression"
                channel, campaign = rng.choice(pairs)
                event = {"event_id": f"{tid}-t{k}", "type": kind, "ts": ts, "tracking_id": tid, "channel": channel}
                if campaign != "(none)":
                    event["campaign"] = campaign
                cost = 0.0
                if rng.random() < 0.5:
                    cost = 0.01 if kind == "impression" else round(rng.uniform(0.3, 1.2), 2)
                    event["cost"] = cost
                self.events.append(event)
                touches.append((ts, kind, channel, campaign))
                self.add(channel, campaign, ts, **{kind + "s": 1, "spend": cost})
                ts += rng.randint(1, 5) * S
            if rng.random() < 0.5:
                continue
            ts += 1 * S
            credited = self.last_click(touches, ts)
            self.touches[tid] = touches
            if rng.random() < 0.4:
                self.events.append({"event_id": f"{tid}-lead", "type": "lead", "ts": ts, "tracking_id": tid})
                self.credit[f"{tid}-lead"] = credited
                self.add(*credited, ts, leads=1)
                continue
            revenue = round(rng.uniform(10, 200), 2)
            event = {"event_id": f"{tid}-order", "type": "order", "ts": ts, "tracking_id": tid,
                     "order_id": f"{tid}-o", "revenue": revenue}
            if rng.random() < 0.2:
                event["currency"] = "EUR"
                revenue *= EUR
            margin = 1.0
            if rng.random() < 0.5:
                margin = round(rng.uniform(0.2, 0.8), 2)
                event["margin"] = margin
            new = rng.random() < 0.6
            if new:
                event["customer_id"] = f"{tid}-customer"  # every customer orders once here: each is new
            self.events.append(event)
            self.credit[event["event_id"]] = credited
            self.add(*credited, ts, orders=1, revenue=revenue, gross_profit=revenue * margin, new_customers=int(new))
        for n, (channel, campaign) in enumerate(pairs):
            for w in range(window_of(start), end, WINDOW_MS):
                ts = rng.randint(max(w, start), min(w + WINDOW_MS - 1, end))
                amount = round(rng.uniform(5, 50), 2)
                event = {"event_id": f"{run}-spend-{n}-{w}", "type": "spend", "ts": ts, "channel": channel,
                         "campaign": campaign, "amount": amount}
                if n == 0:
                    event["currency"] = "EUR"
                    amount *= EUR
                self.events.append(event)
                self.add(channel, campaign, ts, spend=amount)

    @staticmethod
    def last_click(touches: list[tuple[int, str, str, str]], ts: int) -> tuple[str, str]:
        before = sorted(t for t in touches if t[0] <= ts)
        clicks = [t for t in before if t[1] == "click"]
        chosen = (clicks or before or [(0, "", "(direct)", "(none)")])[-1]
        return chosen[2], chosen[3]

    def add(self, channel: str, campaign: str, ts: int, **figures: float) -> None:
        for name, value in figures.items():
            self.channel[channel, window_of(ts)][name] += value
            self.campaign[f"{channel}/{campaign}", window_of(ts)][name] += value

    def totals(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(FIGURES, 0.0))
        for (channel, _), figures in self.channel.items():
            for name, value in figures.items():
                out[channel][name] += value
        return out


# --- two workers, one campaign ---------------------------------------------------------------------------


@pytest.fixture(scope="class")
def pair(
    kafka_broker_factory: Callable[[], KafkaBroker], redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KafkaBroker, list[WorkerProcess]]]:
    broker = kafka_broker_factory()
    env = {"REDIS_URL": redis_url, "TOPIC_PARTITIONS": str(PARTITIONS), "ATTRIBUTION_GRACE": "500ms",
           "FX_RATES": f"EUR={EUR}"}
    log_dir = tmp_path_factory.mktemp("kpi-workers")
    workers = [start_worker(broker.bootstrap, env, log_dir, f"kpi-worker-{i}") for i in (1, 2)]
    try:
        for worker in workers:
            worker.wait_http("/api/v1/state", timeout=90)
        yield broker, workers
    finally:
        stop_workers(*workers)
        broker.stop()


@pytest_asyncio.fixture(scope="class", loop_scope="session")
async def campaign(pair: tuple[KafkaBroker, list[WorkerProcess]]) -> Campaign:
    """Send the campaign once both workers own partitions; wait until metrics.channel shows its figures."""
    broker, workers = pair

    def split() -> bool:
        owned = [set(state(w)["journey_partitions"]) for w in workers]
        return all(owned) and not owned[0] & owned[1] and owned[0] | owned[1] == set(range(PARTITIONS))

    assert await poll(split, timeout=60), f"the two workers did not share the partitions: {[state(w) for w in workers]}"
    scenario = Campaign(seed=7, now=now_ms())
    await send_events(broker.bootstrap, scenario.events)

    async def converged() -> bool:
        records = await consume_all(broker.bootstrap, "metrics.channel", timeout=10)
        return not compare(latest(records), scenario.channel)

    await poll(converged, timeout=60)
    return scenario


class TestTwoWorkersOneCampaign:
    """Both workers up for the whole class; stopped before the next class starts its own."""

    async def test_latest_channel_message_per_window_equals_the_truth(self, pair, campaign: Campaign) -> None:
        broker, _ = pair
        records = await consume_all(broker.bootstrap, "metrics.channel", timeout=15)
        messages = latest(records)

        problems = compare(messages, campaign.channel)
        assert not problems, "\n".join(problems)
        summed: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(FIGURES, 0.0))
        for (channel, _), message in messages.items():
            for name in FIGURES:
                summed[channel][name] += message[name]
        for channel, figures in campaign.totals().items():
            assert figures_differ(summed[channel], figures) == [], channel
        assert len({window for _, window in campaign.channel}) >= 5  # the campaign spans several windows
        assert "(direct)" in summed


    async def test_every_conversion_is_credited_to_its_last_touchpoint(self, pair, campaign: Campaign) -> None:
        broker, _ = pair
        records = await consume_all(broker.bootstrap, "attributions", timeout=15)
        credited = {}
        for record in records:
            message = orjson.loads(record.value)
            credited.setdefault(message["conversion_id"], []).append(
                (message["tracking_id"], message["ts"], [(c["channel"], c["campaign"], c["weight"])
                                                         for c in message["credits"]]))
        wrong = []
        for conversion_id, (channel, campaign_name) in campaign.credit.items():
            got = credited.get(conversion_id)
            if got is None or len(got) != 1 or got[0][2] != [(channel, campaign_name, 1.0)]:
                tid = got[0][0] if got else None
                wrong.append(f"{conversion_id}: credited {got and [g[1:] for g in got]}, expected {channel}/"
                             f"{campaign_name}; touchpoints {campaign.touches.get(tid)}")
        assert not wrong, f"{len(wrong)} of {len(campaign.credit)} conversions:\n" + "\n".join(wrong)

    async def test_latest_campaign_message_per_window_equals_the_truth(self, pair, campaign: Campaign) -> None:
        broker, _ = pair

        async def problems() -> list[str]:
            records = await consume_all(broker.bootstrap, "metrics.campaign", timeout=10)
            return compare(latest(records), campaign.campaign)

        async def converged() -> bool:
            return not await problems()

        await poll(converged, timeout=20)
        found = await problems()
        assert not found, "\n".join(found)
        records = await consume_all(broker.bootstrap, "metrics.campaign", timeout=15)
        for (key, _), message in latest(records).items():
            assert f"{message['channel']}/{message['campaign']}" == key


    async def test_every_metric_message_follows_the_ratio_definitions(self, pair, campaign: Campaign) -> None:
        broker, _ = pair
        records = await consume_all(broker.bootstrap, ["metrics.channel", "metrics.campaign"], timeout=15)
        assert records
        nulls = Counter()
        for record in records:
            message = orjson.loads(record.value)
            validate_metrics(message)
            assert message["window_end"] - message["window_start"] == WINDOW_MS
            assert message["window_start"] % WINDOW_MS == 0
            assert message["final"] is False  # ALLOWED_LATENESS is a day: no window has closed
            if record.topic == "metrics.channel":
                assert message["campaign"] is None
            assert_ratios(message)
            nulls.update(name for name, value in message.items() if value is None)
        assert nulls["cpl"] and nulls["cac"], "the scenario has windows without leads or new customers"


    async def test_prometheus_counters_of_both_workers_add_up_to_the_truth(self, pair, campaign: Campaign) -> None:
        _, workers = pair
        truth = campaign.totals()
        sent = Counter(event["type"] for event in campaign.events)

        def summed() -> tuple[dict[str, dict[str, float]], Counter]:
            samples = [scrape(worker) for worker in workers]
            figures: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(FIGURES, 0.0))
            for name, figure in COUNTERS.items():
                for worker_samples in samples:
                    for channel, value in by_channel(worker_samples, name).items():
                        figures[channel][figure] += value
            ok = sum((events_total(s, "ok") for s in samples), Counter())
            return figures, ok

        figures, ok = summed()
        outcomes = {o: dict(sum((events_total(scrape(w), o) for w in workers), Counter())) for o in
                    ("ok", "duplicate", "late", "invalid")}
        assert ok == sent, f"sent {dict(sent)}, counted {outcomes}"
        assert set(figures) == set(truth)
        for channel, expected in truth.items():
            assert figures_differ(figures[channel], expected) == [], channel
        for worker in workers:  # each worker counted its own share
            assert sum(events_total(scrape(worker), "ok").values()) > 0, worker.name


    async def test_read_api_serves_every_channel_from_both_workers(self, pair, campaign: Campaign) -> None:
        broker, workers = pair
        channels = {channel for channel, _ in campaign.channel}

        def answers() -> list[list[dict[str, Any]]]:
            return [orjson.loads(http_get(worker, "/api/v1/kpis")) for worker in workers]

        def same_and_complete() -> bool:
            first, second = answers()
            return first == second and channels <= {m["channel"] for m in first}

        await poll(same_and_complete, timeout=20)
        first, second = answers()
        assert first == second
        assert isinstance(first, list)
        mine = [m for m in first if m["channel"] in channels]  # Redis is shared with other tests of the session
        assert {m["channel"] for m in mine} == channels
        topic = latest(await consume_all(broker.bootstrap, "metrics.channel", timeout=15))
        for channel in channels:
            served = {m["window_start"]: m for m in mine if m["channel"] == channel}
            newest = max(window for c, window in campaign.channel if c == channel)
            assert newest in served, f"{channel}: the current window {newest} is not served"
            assert len(served) <= 2, f"{channel}: the current and the last closed window only"
            for window, message in served.items():
                validate_metrics(message)
                assert message == topic[channel, window]


# --- event time moves on: final messages, late events, expiry ------------------------------------------------


LATE_ENV = {
    "TOPIC_PARTITIONS": str(PARTITIONS),
    "CLICK_LOOKBACK": "3m",
    "VIEW_LOOKBACK": "90s",
    "ALLOWED_LATENESS": "10s",
    "DEDUP_WINDOW": "2m",
    "ATTRIBUTION_GRACE": "500ms",
}
OLD_VISITORS = 200
CLICK_OUTCOMES = [("attribution_events_total", (("outcome", o), ("type", "click"))) for o in ("ok", "late")]


@pytest.fixture(scope="class")
def late_worker(
    kafka_broker_factory: Callable[[], KafkaBroker], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KafkaBroker, WorkerProcess]]:
    broker = kafka_broker_factory()
    worker = start_worker(broker.bootstrap, LATE_ENV, tmp_path_factory.mktemp("late-worker"), "late-worker")
    try:
        worker.wait_http("/api/v1/state", timeout=90)
        yield broker, worker
    finally:
        stop_workers(worker)
        broker.stop()


@pytest_asyncio.fixture(scope="class", loop_scope="session")
async def moved_on(late_worker: tuple[KafkaBroker, WorkerProcess]) -> dict[str, Any]:
    """Old touchpoints of many visitors in window W0 (ten minutes ago); then an event of now on one
    journey partition (W0 closes: its end + 10 s is long past) and a late click on another partition;
    then events of now on every partition, and late events of each type in W0."""
    broker, worker = late_worker
    run = uuid.uuid4().hex[:8]
    w0 = window_of(now_ms() - 600 * S)
    old = [f"{run}-old-{i}" for i in range(OLD_VISITORS)]
    events: list[dict[str, Any]] = [
        {"event_id": f"{tid}-i", "type": "impression", "ts": w0 + 1 * S + i * 100, "tracking_id": tid,
         "channel": "display", "campaign": "old", "cost": 0.01}
        for i, tid in enumerate(old)
    ]
    events += [{"event_id": f"{tid}-c", "type": "click", "ts": w0 + 30 * S, "tracking_id": tid, "channel": "search",
                "campaign": "old"} for tid in old[:10]]
    events.append({"event_id": f"{run}-s", "type": "spend", "ts": w0 + 5 * S, "channel": "display",
                   "campaign": "old", "amount": 5.0})
    old_order = {"event_id": f"{run}-o", "type": "order", "ts": w0 + 40 * S, "tracking_id": old[0],
                 "order_id": f"{run}-o", "revenue": 30.0}
    events.append(old_order)
    truth = {
        ("display", w0): {**dict.fromkeys(FIGURES, 0.0), "impressions": OLD_VISITORS,
                          "spend": 5.0 + 0.01 * OLD_VISITORS},
        ("search", w0): {**dict.fromkeys(FIGURES, 0.0), "clicks": 10, "orders": 1, "revenue": 30.0,
                         "gross_profit": 30.0},
    }
    await send_events(broker.bootstrap, events)

    async def w0_counted() -> bool:
        messages = latest(await consume_all(broker.bootstrap, "metrics.channel", timeout=10))
        return not compare({k: v for k, v in messages.items() if k[1] == w0}, truth)

    assert await poll(w0_counted, timeout=60), "window W0 never showed its figures"
    before = state(worker)

    # Event time moves on, first on one journey partition only: W0 closes (its end + 10 s is long past)
    current: list[str] = []
    i = 0
    while {partition_of(t) for t in current} != set(range(PARTITIONS)) or len(current) < 2 * PARTITIONS:
        tid = f"{run}-new-{i}"
        i += 1
        if sum(partition_of(t) == partition_of(tid) for t in current) < 2:
            current.append(tid)
    now = now_ms() - 5 * S

    def advance(tids: list[str]) -> list[dict[str, Any]]:
        return [{"event_id": f"{tid}-c", "type": "click", "ts": now, "tracking_id": tid, "channel": "advance"}
                for tid in tids]

    def finals(records: list[Any]) -> dict[tuple[str, int], dict[str, Any]]:
        return {k: m for k, m in latest(records).items() if k[1] == w0 and m["final"]}

    first = current[0]
    await send_events(broker.bootstrap, advance([first]))
    records = await consume_all(broker.bootstrap, "metrics.channel", until=lambda rs: len(finals(rs)) >= 2,
                                timeout=30)
    closed = finals(records)
    assert len(closed) >= 2, "W0 got no final message once event time had passed its end + ALLOWED_LATENESS"

    # a late click on a journey partition that has seen no event of the new time yet
    prometheus_closed = scrape(worker)
    quiet = next(tid for tid in old if partition_of(tid) != partition_of(first))
    quiet_late = {"event_id": f"{run}-late-quiet", "type": "click", "ts": w0 + 31 * S, "tracking_id": quiet,
                  "channel": "search", "campaign": "old", "cost": 2.0}
    await send_events(broker.bootstrap, [quiet_late])
    await poll(lambda: clicks_judged(scrape(worker)) > clicks_judged(prometheus_closed), timeout=15)
    prometheus_quiet = scrape(worker)

    # then on every journey partition
    await send_events(broker.bootstrap, advance(current[1:]))

    def advanced(records: list[Any]) -> bool:
        return any(m["clicks"] == len(current) for (c, _), m in latest(records).items() if c == "advance")

    await consume_all(broker.bootstrap, "metrics.channel", until=advanced, timeout=30)
    prometheus_before = scrape(worker)
    late = [
        {"event_id": f"{run}-late-i", "type": "impression", "ts": w0 + 30 * S, "tracking_id": f"{run}-late",
         "channel": "display", "campaign": "old", "cost": 1.0},
        {"event_id": f"{run}-late-c", "type": "click", "ts": w0 + 31 * S, "tracking_id": old[1],
         "channel": "search", "campaign": "old"},
        {"event_id": f"{run}-late-s", "type": "spend", "ts": w0 + 10 * S, "channel": "display",
         "campaign": "old", "amount": 7.0},
        {"event_id": f"{run}-late-l", "type": "lead", "ts": w0 + 45 * S, "tracking_id": old[1]},
        {"event_id": f"{run}-late-o", "type": "order", "ts": w0 + 50 * S, "tracking_id": old[2],
         "order_id": f"{run}-late-o", "revenue": 99.0},
    ]
    await send_events(broker.bootstrap, late)
    return {"w0": w0, "truth": truth, "old": old, "current": current, "before": before, "finals": closed,
            "late": late, "old_order": old_order, "prometheus_before": prometheus_before,
            "prometheus_closed": prometheus_closed, "prometheus_quiet": prometheus_quiet, "quiet_late": quiet_late}


def clicks_judged(samples: dict) -> float:
    return sum(samples.get(key, 0.0) for key in CLICK_OUTCOMES)


class TestEventTimeMovesOn:
    """One worker with ALLOWED_LATENESS=10s and short lookbacks, on a broker of its own."""

    async def test_a_closed_window_gets_a_final_message_with_its_figures(self, late_worker, moved_on: dict) -> None:
        broker, _ = late_worker
        w0, finals = moved_on["w0"], moved_on["finals"]
        assert set(finals) == set(moved_on["truth"]), f"final messages of W0: {sorted(finals)}"
        for key, message in finals.items():
            validate_metrics(message)
            assert figures_differ(message, moved_on["truth"][key]) == [], key
            assert_ratios(message)
        campaigns = latest(await consume_all(broker.bootstrap, "metrics.campaign", timeout=15))
        for key in ("display/old", "search/old"):
            assert campaigns[key, w0]["final"] is True, key


    async def test_a_late_event_is_counted_late_and_changes_no_figure(self, late_worker, moved_on: dict) -> None:
        broker, worker = late_worker
        w0 = moved_on["w0"]
        expected_late = Counter(event["type"] for event in moved_on["late"])
        before = moved_on["prometheus_before"]

        def late_since() -> Counter:
            return events_total(scrape(worker), "late") - events_total(before, "late")

        await poll(lambda: late_since() == expected_late, timeout=20)
        await asyncio.sleep(2.0)  # metrics are published about once a second: a change would show by now

        samples = scrape(worker)
        assert late_since() == expected_late
        for name in COUNTERS:
            assert by_channel(samples, name) == by_channel(before, name), name
        assert events_total(samples, "ok") == events_total(before, "ok")

        records = await consume_all(broker.bootstrap, "metrics.channel", timeout=15)
        for channel in ("display", "search"):
            after_final = [orjson.loads(r.value) for r in records if r.key.decode() == channel]
            in_w0 = [m for m in after_final if m["window_start"] == w0]
            assert in_w0[-1]["final"] is True, f"{channel}: a message for W0 after its final one: {in_w0[-1]}"
            assert sum(m["final"] for m in in_w0) == 1
            assert figures_differ(in_w0[-1], moved_on["truth"][channel, w0]) == []
        conversions = {r.key.decode() for r in await consume_all(broker.bootstrap, "attributions", timeout=15)}
        assert moved_on["old_order"]["event_id"] in conversions
        assert not {f"{e['event_id']}" for e in moved_on["late"]} & conversions, "a late conversion was attributed"

    async def test_journeys_older_than_the_lookback_leave_the_table(self, late_worker, moved_on: dict) -> None:
        _, worker = late_worker
        before = moved_on["before"]
        assert before["journeys"] >= OLD_VISITORS

        # the sweep runs every 30 s (wall clock): within that, only the current visitors remain
        after = await poll(lambda: (s := state(worker))["journeys"] <= len(moved_on["current"]) and s, timeout=75)

        assert after, f"journeys still in the table: {state(worker)}"
        assert after["journeys"] == len(moved_on["current"])
        assert after["pending_conversions"] == 0
        assert after["channel_windows"] <= 1, "closed windows leave the metrics table"

    async def test_a_late_event_on_a_partition_without_newer_events_is_late_too(self, late_worker, moved_on: dict
                                                                                 ) -> None:
        """W0 has closed (its final message is out) when a click with a ts in W0 arrives for a visitor whose
        journey partition has seen no event of the newer time yet: it is late all the same."""
        broker, _ = late_worker
        before, after = moved_on["prometheus_closed"], moved_on["prometheus_quiet"]
        assert after.get(CLICK_OUTCOMES[1], 0) == before.get(CLICK_OUTCOMES[1], 0) + 1, (
            f"counted late: {after.get(CLICK_OUTCOMES[1], 0) - before.get(CLICK_OUTCOMES[1], 0)}, "
            f"counted ok: {after.get(CLICK_OUTCOMES[0], 0) - before.get(CLICK_OUTCOMES[0], 0)}"
        )
        for name in COUNTERS:
            assert by_channel(after, name) == by_channel(before, name), f"{name} changed after W0 closed"
        records = await consume_all(broker.bootstrap, "metrics.channel", timeout=15)
        in_w0 = [orjson.loads(r.value) for r in records if r.key.decode() == "search"]
        in_w0 = [m for m in in_w0 if m["window_start"] == moved_on["w0"]]
        assert in_w0[-1]["final"] and figures_differ(in_w0[-1], moved_on["truth"]["search", moved_on["w0"]]) == []
