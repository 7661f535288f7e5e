"""Scenarios with a known truth, and the readers that check the engine against it.

Used by test_reliability.py (crash, restart, rebalance, outages) and test_fuzz.py.

A `Scenario` is a seeded synthetic campaign over a few recent 60-second windows: visitors with
impressions and clicks (some with a per-event cost), leads and orders (money in USD and EUR,
margins, new and returning customers), spend reports, exact repeats of events and reloaded
thank-you pages (a second order event with the same `order_id`). The scenario computes, on its
own and without the engine's code, what the contract says the metric topics and `attributions`
must end with under the default model (last click):

- per (channel, window) and per (channel/campaign, window): impressions, clicks, leads, orders,
  new_customers, revenue, spend, gross_profit;
- per conversion `event_id`: its credits (channel, campaign, weight) and whether it was a new
  customer's first order.

It is produced the way a live system would send it: in event-time order, in JSON-array batches,
touchpoints of a slice of time before the conversions of the slice before (a conversion comes
after its touchpoints in the world, so it is sent after them). A visitor's orders travel in one
array, so "the first order of a customer" never depends on how partitions interleave.

The checks read the output topics from the start: the latest message per (key, window) on the
metric topics (a later one replaces the earlier), and every message on `attributions` grouped by
key (a consumer that keeps the latest per key must see each conversion once and right).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.services import WorkerProcess, consume_all

S = 1_000  # ms per second
WINDOW_MS = 60_000
EUR = 1.1
FIGURES = ("impressions", "clicks", "leads", "orders", "new_customers", "revenue", "spend", "gross_profit",
           "suspect_clicks", "refunds", "refunded_revenue")
TOPIC_OF = {"impression": "impressions", "click": "clicks", "lead": "leads", "order": "orders", "spend": "spend"}
TYPE_OF = {topic: kind for kind, topic in TOPIC_OF.items()}
CAMPAIGNS = {
    "google_ads": ("brand", "generic"),
    "facebook": ("prospecting", "retarget"),
    "email": ("(none)",),
    "tiktok": ("ugc",),
}
DIRECT = ("(direct)", "(none)")
Figures = dict[str, float]


def now_ms() -> int:
    return int(time.time() * 1000)


def window_of(ts: int) -> int:
    return ts - ts % WINDOW_MS


def zero() -> Figures:
    return dict.fromkeys(FIGURES, 0.0)


@dataclass
class Expected:
    """What `attributions` must say about one conversion (model last_click)."""

    kind: str
    credits: tuple[tuple[str, str], ...]  # (channel, campaign), weight 1 each under last click
    revenue: float
    new_customer: bool


@dataclass
class Scenario:
    """A seeded campaign of about `events` input events with ts in the last `windows` minutes.

    `steps` is the production plan: a list of steps, each a list of (topic, JSON-array value).
    """

    seed: int
    events: int = 20_000
    windows: int = 4
    now: int = field(default_factory=now_ms)
    batch: int = 250
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    channel: dict[tuple[str, int], Figures] = field(default_factory=lambda: defaultdict(zero))
    campaign: dict[tuple[str, int], Figures] = field(default_factory=lambda: defaultdict(zero))
    conversions: dict[str, Expected] = field(default_factory=dict)
    sent: Counter = field(default_factory=Counter)  # input elements per type, repeats included
    outcomes: Counter = field(default_factory=Counter)  # (type, "ok" | "duplicate") the engine must count
    steps: list[list[tuple[str, bytes]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        end = self.now - 5 * S
        start = window_of(end) - (self.windows - 1) * WINDOW_MS
        pairs = [(channel, campaign) for channel, campaigns in CAMPAIGNS.items() for campaign in campaigns]
        touches: list[dict[str, Any]] = []
        conversions: list[tuple[int, list[dict[str, Any]]]] = []  # (ts of the first, the visitor's conversions)
        repeats: list[dict[str, Any]] = []
        spend: list[dict[str, Any]] = []
        count = 0
        visitor = 0
        while count < self.events:
            tid = f"{self.run}-v{visitor}"
            visitor += 1
            ts = rng.randint(start, end - 40 * S)
            path: list[tuple[int, str, str, str]] = []
            for k in range(rng.choice((0, 1, 1, 2, 2, 3, 4))):
                kind = "click" if rng.random() < 0.3 else "impression"
                channel, campaign = rng.choice(pairs)
                event: dict[str, Any] = {"event_id": f"{tid}-t{k}", "type": kind, "ts": ts, "tracking_id": tid,
                                         "channel": channel}
                if campaign != "(none)" or rng.random() < 0.5:
                    event["campaign"] = campaign
                cost = 0.0
                if rng.random() < 0.4:
                    cost = 0.002 if kind == "impression" else round(rng.uniform(0.2, 1.5), 2)
                    event["cost"] = cost
                touches.append(event)
                path.append((ts, kind, channel, campaign))
                self.add(channel, campaign, ts, **{kind + "s": 1, "spend": cost})
                self.outcomes[kind, "ok"] += 1
                count += 1
                if rng.random() < 0.01:  # a tracker that fired twice: the same event again, later
                    repeats.append(event)
                    self.outcomes[kind, "duplicate"] += 1
                    count += 1
                ts += rng.randint(200, 3_000)
            if rng.random() < 0.72:
                continue
            ts += rng.randint(300, 5_000)
            if rng.random() < 0.4:
                lead = {"event_id": f"{tid}-lead", "type": "lead", "ts": ts, "tracking_id": tid}
                if rng.random() < 0.5:
                    lead["customer_id"] = f"{self.run}-lead-c{visitor}"
                self.expect(lead, path, 0.0, 1.0, False)
                conversions.append((ts, [lead]))
                count += 1
                continue
            customer = f"{self.run}-c{visitor}" if rng.random() < 0.7 else None
            orders: list[dict[str, Any]] = []
            for n in range(2 if customer and rng.random() < 0.15 else 1):  # some customers order twice
                order: dict[str, Any] = {"event_id": f"{tid}-o{n}", "type": "order", "ts": ts, "tracking_id": tid,
                                         "order_id": f"{tid}-order{n}", "revenue": round(rng.uniform(5, 300), 2)}
                revenue = order["revenue"]
                if rng.random() < 0.2:
                    order["currency"] = "EUR"
                    revenue = revenue * EUR
                margin = 1.0
                if rng.random() < 0.5:
                    margin = round(rng.uniform(0.1, 0.9), 2)
                    order["margin"] = margin
                if customer:
                    order["customer_id"] = customer
                self.expect(order, path, revenue, margin, customer is not None and n == 0)
                orders.append(order)
                count += 1
                if rng.random() < 0.03:  # the thank-you page reloaded: same order_id, a new event_id
                    orders.append({**order, "event_id": f"{tid}-o{n}-reload"})
                    self.outcomes["order", "duplicate"] += 1
                    count += 1
                ts += rng.randint(1_000, 20_000)
            conversions.append((orders[0]["ts"], orders))
            if rng.random() < 0.05:  # a touchpoint after the conversion: counted, but credits nothing
                channel, campaign = rng.choice(pairs)
                event = {"event_id": f"{tid}-after", "type": "click", "ts": ts, "tracking_id": tid,
                         "channel": channel, "campaign": campaign}
                touches.append(event)
                self.add(channel, campaign, ts, clicks=1)
                self.outcomes["click", "ok"] += 1
                count += 1
        for n, (channel, campaign) in enumerate(pairs):
            for w in range(start, end, WINDOW_MS):
                for _ in range(2):
                    ts = rng.randint(w, min(w + WINDOW_MS, end) - 1)
                    amount = round(rng.uniform(1, 40), 2)
                    event = {"event_id": f"{self.run}-spend-{n}-{ts}-{len(spend)}", "type": "spend", "ts": ts,
                             "channel": channel, "campaign": campaign, "amount": amount}
                    if n % 3 == 0:
                        event["currency"] = "EUR"
                        amount *= EUR
                    spend.append(event)
                    self.add(channel, campaign, ts, spend=amount)
                    self.outcomes["spend", "ok"] += 1
        self.plan(rng, touches, spend, conversions, repeats)

    # --- the truth ------------------------------------------------------------------------------------

    def add(self, channel: str, campaign: str, ts: int, **figures: float) -> None:
        for name, value in figures.items():
            self.channel[channel, window_of(ts)][name] += value
            self.campaign[f"{channel}/{campaign}", window_of(ts)][name] += value

    def expect(self, conversion: dict[str, Any], path: list[tuple[int, str, str, str]], revenue: float,
               margin: float, new_customer: bool) -> None:
        ts = conversion["ts"]
        before = sorted(t for t in path if t[0] <= ts)
        clicks = [t for t in before if t[1] == "click"]
        chosen = (clicks or before)[-1][2:] if before else DIRECT
        self.conversions[conversion["event_id"]] = Expected(conversion["type"], (chosen,), revenue, new_customer)
        self.outcomes[conversion["type"], "ok"] += 1
        if conversion["type"] == "lead":
            self.add(*chosen, ts, leads=1)
        else:
            self.add(*chosen, ts, orders=1, revenue=revenue, gross_profit=revenue * margin,
                     new_customers=int(new_customer))

    def totals(self) -> dict[str, Figures]:
        return sum_by_channel(self.channel)

    # --- the production plan --------------------------------------------------------------------------

    def plan(self, rng: random.Random, touches: list[dict[str, Any]], spend: list[dict[str, Any]],
             conversions: list[tuple[int, list[dict[str, Any]]]], repeats: list[dict[str, Any]]) -> None:
        """Slices of event time; step k sends the touchpoints and spend of slice k, then the conversions
        of slice k-1, then the repeats of slice k-2 (each a JSON array of up to `batch` events)."""
        slices = max(4, self.events // 2_000)
        first = min(e["ts"] for e in touches + spend)
        last = max(e["ts"] for e in touches + spend) + 1
        width = math.ceil((last - first) / slices)

        def slice_of(ts: int) -> int:
            return min(slices - 1, max(0, (ts - first) // width))

        by_slice: list[dict[str, list[Any]]] = [defaultdict(list) for _ in range(slices + 2)]
        for event in sorted(touches + spend, key=lambda e: e["ts"]):
            by_slice[slice_of(event["ts"])][TOPIC_OF[event["type"]]].append(event)
        for ts, group in sorted(conversions, key=lambda c: c[0]):
            by_slice[slice_of(ts) + 1][TOPIC_OF[group[0]["type"]]].append(group)
        for event in repeats:
            by_slice[slice_of(event["ts"]) + 2][TOPIC_OF[event["type"]]].append(event)
        for parts in by_slice:
            step: list[tuple[str, bytes]] = []
            for topic in ("impressions", "clicks", "spend", "leads", "orders"):
                items = parts.get(topic, [])
                if topic in ("leads", "orders"):  # groups: a visitor's conversions stay in one array
                    arrays: list[list[dict[str, Any]]] = [[]]
                    for group in items:
                        if len(arrays[-1]) + len(group) > self.batch:
                            arrays.append([])
                        arrays[-1].extend(group)
                else:
                    arrays = [items[i : i + self.batch] for i in range(0, len(items), self.batch)]
                for array in arrays:
                    if array:
                        self.sent.update(e["type"] for e in array)
                        step.append((topic, orjson.dumps(array)))
            if step:
                self.steps.append(step)

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    def split_steps(self, fraction: float) -> tuple[list[list[tuple[str, bytes]]], list[list[tuple[str, bytes]]]]:
        cut = max(1, min(len(self.steps) - 1, round(len(self.steps) * fraction)))
        return self.steps[:cut], self.steps[cut:]


def sum_by_channel(figures: dict[tuple[str, int], Figures]) -> dict[str, Figures]:
    out: dict[str, Figures] = defaultdict(zero)
    for (channel, _), values in figures.items():
        for name in FIGURES:
            out[channel][name] += values.get(name, 0.0)
    return out


# --- producing ---------------------------------------------------------------------------------------------


async def produce_steps(bootstrap: str, steps: Sequence[list[tuple[str, bytes]]], pause: float = 0.0) -> int:
    """Send the steps in order, each acknowledged (acks=all) before the next; returns messages sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024,
                                max_request_size=8 * 1024 * 1024, request_timeout_ms=60_000)
    await producer.start()
    sent = 0
    try:
        for step in steps:
            futures = [await producer.send(topic, value) for topic, value in step]
            await asyncio.gather(*futures)
            sent += len(futures)
            if pause:
                await asyncio.sleep(pause)
    finally:
        await producer.stop()
    return sent


# --- reading the output ------------------------------------------------------------------------------------


def latest_per_window(records: Iterable[Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """The latest message per (key, window_start): a key stays on one partition, so partition order is time."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for record in records:
        message = orjson.loads(record.value)
        out[record.key.decode(), message["window_start"]] = message
    return out


async def read_latest(bootstrap: str, topic: str, timeout: float = 20.0) -> dict[tuple[str, int], dict[str, Any]]:
    return latest_per_window(await consume_all(bootstrap, topic, timeout=timeout))


def close(actual: float | None, expected: float) -> bool:
    return actual is not None and math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-6)


def compare_figures(latest: dict[tuple[str, int], dict[str, Any]], truth: dict[tuple[str, int], Figures],
                    keys: Callable[[str], bool] = lambda key: True) -> list[str]:
    """Every difference between the latest messages and the truth, as readable lines (empty: exact)."""
    latest = {k: v for k, v in latest.items() if keys(k[0])}
    problems = [f"{key}: no message, expected {dict(truth[key])}" for key in sorted(truth.keys() - latest.keys())]
    problems += [f"{key}: unexpected message {latest[key]}" for key in sorted(latest.keys() - truth.keys())]
    for key in sorted(truth.keys() & latest.keys()):
        diffs = [f"{name} {latest[key].get(name)} != {truth[key][name]}" for name in FIGURES
                 if not close(latest[key].get(name), truth[key][name])]
        if diffs:
            problems.append(f"{key}: " + ", ".join(diffs))
    return problems


def compare_totals(latest: dict[tuple[str, int], dict[str, Any]], scenario: Scenario) -> list[str]:
    """Per channel, the latest message of every window summed, against the truth's totals."""
    summed = sum_by_channel({key: {n: m.get(n) or 0.0 for n in FIGURES} for key, m in latest.items()})
    problems = []
    for channel, expected in sorted(scenario.totals().items()):
        diffs = [f"{name} {summed[channel][name]} != {expected[name]}" for name in FIGURES
                 if not close(summed[channel][name], expected[name])]
        if diffs:
            problems.append(f"total of {channel}: " + ", ".join(diffs))
    return problems


def compare_grand_totals(latest: dict[tuple[str, int], dict[str, Any]], scenario: Scenario) -> list[str]:
    """All channels and windows together: tells a lost or double-counted figure from one credited to the wrong
    channel (the grand total is right, the split is not)."""
    summed = {name: sum(m.get(name) or 0.0 for m in latest.values()) for name in FIGURES}
    expected = {name: sum(f[name] for f in scenario.channel.values()) for name in FIGURES}
    return [f"grand total {name} {summed[name]} != {expected[name]}" for name in FIGURES
            if not close(summed[name], expected[name])]


def check_metrics(channel_latest: dict[tuple[str, int], dict[str, Any]],
                  campaign_latest: dict[tuple[str, int], dict[str, Any]] | None, scenario: Scenario) -> list[str]:
    problems = compare_totals(channel_latest, scenario) + compare_figures(channel_latest, scenario.channel)
    if campaign_latest is not None:
        problems += compare_figures(campaign_latest, scenario.campaign)
    return problems


async def read_attributions(bootstrap: str, timeout: float = 30.0) -> dict[str, list[dict[str, Any]]]:
    """Every message on `attributions`, per key (the conversion's event_id), in the order written."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in await consume_all(bootstrap, "attributions", timeout=timeout):
        out[record.key.decode()].append(orjson.loads(record.value))
    return out


def essence(message: dict[str, Any]) -> tuple[Any, ...]:
    """What a repeated attribution must repeat exactly: credits, revenue, commissions, new customer or not."""
    credits = tuple((c["channel"], c["campaign"], c["affiliate_id"], round(c["weight"], 12),
                     round(c["revenue"], 9)) for c in message["credits"])
    commissions = tuple((c["affiliate_id"], c["role"], round(c["amount"], 9)) for c in message["commissions"])
    return (message["conversion_id"], message["type"], credits, round(message["revenue"], 9), commissions,
            message.get("new_customer"))


def check_attributions(by_key: dict[str, list[dict[str, Any]]], scenario: Scenario) -> tuple[list[str], int]:
    """Problems with `attributions` (empty: each conversion once and right); and how many keys were repeated."""
    problems = []
    mine = {key: messages for key, messages in by_key.items() if key.startswith(scenario.run)}
    missing = sorted(scenario.conversions.keys() - mine.keys())
    extra = sorted(mine.keys() - scenario.conversions.keys())
    if missing:
        problems.append(f"{len(missing)} conversions never attributed, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} unexpected attributions (repeats counted as conversions?), e.g. {extra[:5]}")
    repeated = 0
    for key in sorted(scenario.conversions.keys() & mine.keys()):
        messages = mine[key]
        expected = scenario.conversions[key]
        if len(messages) > 1:
            repeated += 1
            if len({essence(m) for m in messages}) > 1:
                problems.append(f"{key}: a repeated attribution differs: {[essence(m) for m in messages]}")
        last = messages[-1]
        credits = tuple((c["channel"], c["campaign"]) for c in last["credits"])
        weights = [c["weight"] for c in last["credits"]]
        if credits != expected.credits or not all(close(w, 1.0) for w in weights):
            problems.append(f"{key}: credits {last['credits']} != {expected.credits} (weight 1)")
        if not close(last["revenue"], expected.revenue):
            problems.append(f"{key}: revenue {last['revenue']} != {expected.revenue}")
        if last.get("new_customer") is not expected.new_customer and expected.kind == "order":
            problems.append(f"{key}: new_customer {last.get('new_customer')} != {expected.new_customer}")
    return problems, repeated


async def check_all(bootstrap: str, scenario: Scenario, campaigns: bool = True) -> list[str]:
    channel = await read_latest(bootstrap, "metrics.channel")
    campaign = await read_latest(bootstrap, "metrics.campaign") if campaigns else None
    return check_metrics(channel, campaign, scenario)


async def wait_exact(bootstrap: str, scenario: Scenario, timeout: float, settle: float = 2.5) -> list[str]:
    """Poll the metric topics until they equal the truth (then check once more after `settle` seconds, so a
    late double count shows: figures are published about once a second); return the problems found last
    (empty: exact)."""
    deadline = time.monotonic() + timeout
    problems = ["never read"]
    while time.monotonic() < deadline:
        problems = await check_all(bootstrap, scenario, campaigns=False)
        if not problems:
            await asyncio.sleep(settle)
            return await check_all(bootstrap, scenario)
        await asyncio.sleep(1.0)
    return problems


async def assert_exact_on(bootstrap: str, scenario: Scenario, report: dict[str, object], converge_s: float,
                          *workers: WorkerProcess) -> None:
    """The metric topics equal the truth within `converge_s`; every conversion is on `attributions` once and
    right. `report` (what the test did, and what was found) is printed either way."""
    began = time.monotonic()
    problems = await wait_exact(bootstrap, scenario, timeout=converge_s)
    report["converged_s"] = round(time.monotonic() - began, 1)
    if problems:  # lost or counted twice, or credited to the wrong channel?
        latest = await read_latest(bootstrap, "metrics.channel")
        report["grand_totals"] = compare_grand_totals(latest, scenario) or "exact"
        report["state"] = [await asyncio.to_thread(state, w) for w in workers if w.alive]
    attributions = await read_attributions(bootstrap)
    attribution_problems, repeated = check_attributions(attributions, scenario)
    report["repeated_attributions"] = repeated
    if attribution_problems:
        report["attribution_problems"] = len(attribution_problems)
        report["attribution_examples"] = attribution_problems[:3]
    print(f"reliability report: {report}")
    assert problems == [], f"{len(problems)} differences from the truth, e.g.:\n" + "\n".join(problems[:30])
    assert attribution_problems == [], f"{len(attribution_problems)} attribution problems, e.g.:\n" + "\n".join(
        attribution_problems[:30])


async def poll(check: Callable[[], Any | Awaitable[Any]], timeout: float, interval: float = 0.5) -> Any:
    """Call `check` (sync or async) until it returns something true or `timeout` passes; return its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval)


# --- the worker's own view -----------------------------------------------------------------------------------


def http_get(worker: WorkerProcess, path: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}{path}", timeout=timeout) as response:  # noqa: S310
        return response.read()


def scrape(worker: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(http_get(worker, "/metrics").decode())
        for sample in family.samples
    }


def outcomes(worker: WorkerProcess) -> Counter:
    """`attribution_events_total` as a Counter of (type, outcome)."""
    out: Counter = Counter()
    for (name, labels), value in scrape(worker).items():
        if name == "attribution_events_total":
            label = dict(labels)
            out[label["type"], label["outcome"]] += int(value)
    return out


def processed(worker: WorkerProcess) -> int:
    """Input elements the worker has judged so far (ok, duplicate, late or invalid); -1 when it does not answer."""
    try:
        return sum(outcomes(worker).values())
    except OSError:
        return -1


def state(worker: WorkerProcess) -> dict[str, Any]:
    return orjson.loads(http_get(worker, "/api/v1/state"))


async def started(worker: WorkerProcess) -> WorkerProcess:
    """The worker, once its read API answers."""
    await asyncio.to_thread(worker.wait_http, "/api/v1/state", 90)
    return worker


async def start_workers(make_worker: Callable[..., WorkerProcess], bootstrap: str, env: dict[str, str],
                        prefix: str, count: int) -> list[WorkerProcess]:
    """`count` workers named PREFIX-1.., started one after the other (each once its read API answers)."""
    workers = [make_worker(bootstrap=bootstrap, env=env, name=f"{prefix}-{i}") for i in range(1, count + 1)]
    for worker in workers:
        await started(worker)
    return workers


def shared(workers: list[WorkerProcess], partitions: int) -> bool:
    """Each worker owns some journey partitions, and each partition has one owner among them."""
    owned = [set(state(w)["journey_partitions"]) for w in workers]
    return all(owned) and sum(map(len, owned)) == partitions and set().union(*owned) == set(range(partitions))


async def wait_processed(worker: WorkerProcess, at_least: int, timeout: float) -> int:
    """Wait until the worker has judged `at_least` input elements; returns the count seen last."""
    seen = 0

    async def enough() -> bool:
        nonlocal seen
        seen = await asyncio.to_thread(processed, worker)
        return seen >= at_least

    await poll(enough, timeout, interval=0.2)
    return seen


# --- the journeys changelog ------------------------------------------------------------------------------------

JOURNEYS_CHANGELOG = "attribution-journeys-changelog"


def absorbed_ids(row: bytes) -> set[int]:
    """The id hashes a journey row remembers: its touchpoints' and the other events' (conversions, repeats)."""
    from streams.core.journeys import Journey

    journey = Journey.from_row(row)
    return set(journey.ids) | {touch[2] for touch in journey.touches}


def changelog_regressions(records: Iterable[Any]) -> tuple[list[str], list[str]]:
    """Journey records that forget an event an earlier record of the same key held: a row written from older
    state after a newer one (a zombie's late write). Within a short run nothing expires, so a key's rows only ever
    gain ids; a tombstone starts the key over. Returned in two lists: those recovery would keep, the row it holds
    being the last it did not skip as older by its mark (`streams.core.journeys.journey_row_older`), and those it
    would skip."""
    from streams.core.journeys import journey_row_older

    held: dict[bytes, tuple[bytes, set[int], int]] = {}
    kept, skipped = [], []
    for record in records:
        if record.value is None:
            held.pop(record.key, None)
            continue
        ids = absorbed_ids(record.value)
        row, before, made = held.get(record.key, (b"", set(), 0))
        lost = before - ids
        found = (f"{record.key!r} at {record.partition}/{record.offset}: {len(lost)} ids gone "
                 f"(made {record.timestamp - made} ms after the newer row)")
        if row and journey_row_older(row, record.value):
            skipped.append(found)
            continue
        if lost:
            kept.append(found)
        held[record.key] = record.value, ids, record.timestamp
    return kept, skipped


PARTIALS_CHANGELOG = "attribution-partials-changelog"
CHANNEL_WINDOWS_CHANGELOG = "attribution-channel-windows-changelog"


def mark_regressions(records: Iterable[Any], marks_of: Callable[[Any], dict[str, list[int]]]) -> list[str]:
    """Records of a table whose sequence marks go back below an earlier record of the same key (per source): a row
    written from older state after a newer one. `marks_of(decoded row)` -> {source: [touch mark, conversion mark]}."""
    held: dict[bytes, tuple[dict[str, list[int]], int]] = {}
    problems = []
    for record in records:
        if record.value is None:
            held.pop(record.key, None)
            continue
        marks = marks_of(orjson.loads(record.value))
        before, made = held.get(record.key, ({}, 0))
        back = [s for s, m in before.items() if s not in marks or marks[s][0] < m[0] or marks[s][1] < m[1]]
        if back:  # made: the record's timestamp, given by the producer when it was queued, against the newer one's
            problems.append(f"{record.key!r} at {record.partition}/{record.offset}: marks of {back} went back "
                            f"(made {record.timestamp - made} ms after the newer row)")
        held[record.key] = marks, record.timestamp
    return problems


def partial_marks(row: list[Any]) -> dict[str, list[int]]:
    return {"": list(row[:2])}


def channel_window_marks(row: Any) -> dict[str, list[int]]:
    return dict(row[1]) if isinstance(row, list) and len(row) == 2 else {}


async def zombie_report(bootstrap: str, zombie: WorkerProcess) -> dict[str, list[str]]:
    """After a zombie run: the records written from older state than an earlier record of their key, per changelog,
    printed with what the zombie's fence dropped and what recovery skipped; returned for the test to judge."""
    late: dict[str, list[str]] = {}
    late["journeys"], late["journeys, skipped by recovery"] = changelog_regressions(
        await consume_all(bootstrap, JOURNEYS_CHANGELOG, timeout=30))
    for topic, marks_of in ((PARTIALS_CHANGELOG, partial_marks), (CHANNEL_WINDOWS_CHANGELOG, channel_window_marks)):
        late[topic] = mark_regressions(await consume_all(bootstrap, topic, timeout=30), marks_of)
    counted = await asyncio.to_thread(scrape, zombie) if zombie.alive else {}

    def per_table(metric: str) -> dict[str, float]:
        return {dict(labels)["table"]: n for (name, labels), n in counted.items() if name == metric}

    print("reliability report: " + str({
        "test": "zombie", "dropped by the fence": per_table("attribution_fenced_changelog_records_total"),
        "skipped in recovery": per_table("attribution_stale_changelog_records_total"),
        "records written from older state": {topic: f"{len(found)}, e.g. {found[:2]}"
                                             for topic, found in late.items()}}))
    return late
