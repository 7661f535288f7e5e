"""The Markov model live (CONTRACT.md section 8), on the real Apache Kafka broker with a real worker.

Seeded visitors, each a few touchpoints in the last 40 minutes of event time: some convert shortly after
their last touchpoint, some convert only after PATH_TIMEOUT has passed (their path first ends as null,
then turns converting), some never convert (one null path, or two when a pause longer than PATH_TIMEOUT
splits their touchpoints). A last click at "now" from a visitor of its own moves event time past every
seeded path's timeout. The test works out every path itself and the exact removal effects of their
chain (by value iteration, independent of the engine's linear solve), and requires `metrics.markov` to
count every path, converting and null, exactly, with shares equal to those effects; also after a kill -9
of the worker mid-run.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import pytest

from tests.integration.reliability_support import poll, produce_steps, wait_processed
from tests.integration.services import KafkaBroker, WorkerProcess, consume_all

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
S = 1_000
MINUTE = 60 * S
PATH_TIMEOUT_MS = 2 * MINUTE
CHANNELS = ("search", "social", "email", "display", "video")
CONVERGE_S = 150.0
validate_markov = fastjsonschema.compile(orjson.loads((ROOT / "schemas" / "markov.json").read_bytes()))
validate_attribution = fastjsonschema.compile(orjson.loads((ROOT / "schemas" / "attribution.json").read_bytes()))


def worker_env(redis_url: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "TOPIC_PARTITIONS": "4",
        "CLICK_LOOKBACK": "1h",
        "VIEW_LOOKBACK": "1h",
        "ATTRIBUTION_GRACE": "500ms",
        "PATH_TIMEOUT": "2m",
        "MARKOV_INTERVAL": "1s",
        "KAFKA_SESSION_TIMEOUT": "6s",
    }


@pytest.fixture
def broker(kafka_broker_factory: Callable[[], KafkaBroker]) -> Iterator[KafkaBroker]:
    started = kafka_broker_factory()
    yield started
    started.stop()


# --- the seeded journeys and their truth -----------------------------------------------------------------


@dataclass
class Truth:
    paths: list[tuple[list[str], bool, float]] = field(default_factory=list)  # channels, converted, revenue
    steps: list[list[tuple[str, bytes]]] = field(default_factory=list)
    events: int = 0
    conversions: list[str] = field(default_factory=list)
    last_clicks: Counter[str] = field(default_factory=Counter)  # converting paths per channel of their last click

    @property
    def converting(self) -> int:
        return sum(1 for _, converted, _ in self.paths if converted)

    @property
    def null(self) -> int:
        return len(self.paths) - self.converting

    @property
    def revenue(self) -> float:
        return sum(revenue for _, converted, revenue in self.paths if converted)


def seeded(seed: int, visitors: int, now: int) -> Truth:
    rng = random.Random(seed)
    truth = Truth()
    events: list[tuple[int, dict[str, Any]]] = []
    run = uuid.uuid4().hex[:8]

    def touch(tid: str, ts: int, channel: str) -> dict[str, Any]:
        kind = rng.choice(("click", "click", "impression"))
        return {"event_id": f"{kind}-{uuid.uuid4().hex[:12]}", "type": kind, "ts": ts, "tracking_id": tid,
                "channel": channel, "campaign": rng.choice(("brand", "generic"))}

    for i in range(visitors):
        tid = f"mv-{run}-{i}"
        start = now - 40 * MINUTE + rng.randrange(0, 33 * MINUTE)
        channels = [rng.choice(CHANNELS) for _ in range(rng.randint(1, 4))]
        times = [start + j * 20 * S for j in range(len(channels))]
        odds = 0.1 + 0.4 * ("email" in channels) + 0.2 * (channels[-1] == "search") - 0.05 * ("display" in channels)
        fate = rng.random()
        touches = [touch(tid, ts, channel) for ts, channel in zip(times, channels, strict=True)]
        events += [(t["ts"], t) for t in touches]
        if fate < odds:
            late = rng.random() < 0.3  # after PATH_TIMEOUT: its path ends as null first, then turns converting
            ts = times[-1] + (PATH_TIMEOUT_MS + 30 * S if late else 30 * S)
            revenue = float(rng.randrange(10, 200))
            if rng.random() < 0.7:
                conversion = {"event_id": f"order-{uuid.uuid4().hex[:12]}", "type": "order", "ts": ts,
                              "tracking_id": tid, "order_id": f"oid-{uuid.uuid4().hex[:12]}", "revenue": revenue}
            else:
                conversion, revenue = {"event_id": f"lead-{uuid.uuid4().hex[:12]}", "type": "lead", "ts": ts,
                                       "tracking_id": tid}, 0.0
            events.append((ts, conversion))
            truth.paths.append((channels, True, revenue))
            truth.conversions.append(conversion["event_id"])
            truth.last_clicks[([t for t in touches if t["type"] == "click"] or touches)[-1]["channel"]] += 1
        elif rng.random() < 0.15:  # a second session after a pause longer than PATH_TIMEOUT: two null paths
            more = [rng.choice(CHANNELS) for _ in range(rng.randint(1, 2))]
            resume = times[-1] + PATH_TIMEOUT_MS + 20 * S
            for j, channel in enumerate(more):
                events.append((resume + j * 20 * S, touch(tid, resume + j * 20 * S, channel)))
            truth.paths += [(channels, False, 0.0), (more, False, 0.0)]
        else:
            truth.paths.append((channels, False, 0.0))
    # event time moves past every seeded path's timeout (this visitor's own path stays open)
    events.append((now, {"event_id": f"click-{uuid.uuid4().hex[:12]}", "type": "click", "ts": now,
                             "tracking_id": f"mv-{run}-clock", "channel": "search"}))
    events.sort(key=lambda item: item[0])
    topics = {"impression": "impressions", "click": "clicks", "lead": "leads", "order": "orders"}
    for start in range(0, len(events), 40):
        chunk = events[start : start + 40]
        truth.steps.append([(topics[e["type"]], orjson.dumps(e)) for _, e in chunk])
    truth.events = len(events)
    return truth


def exact_shares(paths: list[tuple[list[str], bool, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Removal effects and shares by value iteration over the chain of the paths (no linear solve)."""
    counts: Counter[tuple[str, str]] = Counter()
    for channels, converted, _ in paths:
        states = ["(start)", *channels, "(conversion)" if converted else "(null)"]
        counts.update(zip(states, states[1:], strict=False))
    totals: Counter[str] = Counter()
    for (source, _), n in counts.items():
        totals[source] += n
    channels = sorted({c for path, _, _ in paths for c in path})

    def p_conversion(removed: str | None) -> float:
        x = dict.fromkeys(["(start)", *channels], 0.0)
        for _ in range(5000):
            nxt = {}
            for state in x:
                if state == removed:
                    nxt[state] = 0.0
                    continue
                nxt[state] = sum(n / totals[state] * (1.0 if target == "(conversion)" else x.get(target, 0.0))
                                 for (source, target), n in counts.items()
                                 if source == state and target != "(null)" and target != removed)
            if max(abs(nxt[s] - x[s]) for s in x) < 1e-15:
                return nxt["(start)"]
            x = nxt
        return x["(start)"]

    p = p_conversion(None)
    effects = {c: 1 - p_conversion(c) / p for c in channels}
    total = sum(effects.values())
    return effects, {c: e / total for c, e in effects.items()}


# --- reading the output --------------------------------------------------------------------------------


async def latest_model(bootstrap: str) -> list[dict[str, Any]]:
    records = await consume_all(bootstrap, "metrics.markov", timeout=10)
    by_channel: dict[str, dict[str, Any]] = {}
    for record in records:
        message = orjson.loads(record.value)
        known = by_channel.get(message["channel"])
        if known is None or message["computed_at"] >= known["computed_at"]:
            by_channel[message["channel"]] = message
    if not by_channel:
        return []
    newest = max(m["computed_at"] for m in by_channel.values())
    return sorted((m for m in by_channel.values() if m["computed_at"] == newest), key=lambda m: m["channel"])


async def wait_model(bootstrap: str, truth: Truth, timeout: float) -> list[dict[str, Any]]:
    """The newest computation once it counts every seeded path and all its channels are read (its messages are on
    several partitions: a read between two of their writes holds some channels only), or the newest when the time
    is up."""
    latest: list[dict[str, Any]] = []
    channels = sorted(exact_shares(truth.paths)[0])

    async def counted() -> bool:
        nonlocal latest
        latest = await latest_model(bootstrap)
        return [m["channel"] for m in latest] == channels and all(
            (m["paths"], m["converting_paths"], m["null_paths"]) == (len(truth.paths), truth.converting, truth.null)
            for m in latest)

    await poll(counted, timeout=timeout, interval=2.0)
    return latest


def assert_model_exact(model: list[dict[str, Any]], truth: Truth) -> None:
    effects, shares = exact_shares(truth.paths)
    assert [m["channel"] for m in model] == sorted(effects)
    for message in model:
        validate_markov(message)
        channel = message["channel"]
        assert (message["paths"], message["converting_paths"], message["null_paths"]) == (
            len(truth.paths), truth.converting, truth.null), message
        assert message["removal_effect"] == pytest.approx(effects[channel], abs=1e-9), channel
        assert message["share"] == pytest.approx(shares[channel], abs=1e-9), channel
        assert message["conversions"] == pytest.approx(truth.converting * shares[channel], abs=1e-6)
        assert message["revenue"] == pytest.approx(truth.revenue * shares[channel], abs=1e-6)
        assert message["last_click_share"] == pytest.approx(truth.last_clicks[channel] / truth.converting)
    assert sum(m["share"] for m in model) == pytest.approx(1.0)


def http_json(worker: WorkerProcess, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}{path}", timeout=5) as response:
        return orjson.loads(response.read())


def gauge_values(worker: WorkerProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("attribution_markov_share{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('channel="', 1)[1].split('"', 1)[0]] = float(value)
    return out


# --- the tests ------------------------------------------------------------------------------------------


async def test_metrics_markov_counts_every_path_and_its_shares_are_the_exact_removal_effects(
    broker: KafkaBroker, redis_url: str, make_worker: Callable[..., WorkerProcess]
) -> None:
    worker = make_worker(bootstrap=broker.bootstrap, env=worker_env(redis_url), name="markov")
    await asyncio.to_thread(worker.wait_http, "/api/v1/state", 90)
    truth = seeded(seed=11, visitors=300, now=int(time.time() * 1000))
    assert truth.null > 0 and truth.converting > 0
    await produce_steps(broker.bootstrap, truth.steps)

    model = await wait_model(broker.bootstrap, truth, CONVERGE_S)
    assert_model_exact(model, truth)

    served = http_json(worker, "/api/v1/markov")
    assert {m["channel"]: m["share"] for m in served} == {m["channel"]: m["share"] for m in model}
    assert gauge_values(worker) == pytest.approx({m["channel"]: m["share"] for m in model})

    # every conversion carries models.markov; a conversion attributed after the model was known is credited
    # by its removal effects (weights proportional to RE over the path's distinct channels)
    records = await consume_all(broker.bootstrap, "attributions", timeout=10)
    messages = {orjson.loads(r.value)["conversion_id"]: orjson.loads(r.value) for r in records}
    assert set(truth.conversions) <= set(messages)
    for conversion_id in truth.conversions:
        message = messages[conversion_id]
        validate_attribution(message)
        assert sum(c["weight"] for c in message["models"]["markov"]) == pytest.approx(1.0)


async def test_kill_9_mid_run_leaves_path_counts_and_shares_exact(
    broker: KafkaBroker, redis_url: str, make_worker: Callable[..., WorkerProcess]
) -> None:
    worker = make_worker(bootstrap=broker.bootstrap, env=worker_env(redis_url), name="markov-kill")
    await asyncio.to_thread(worker.wait_http, "/api/v1/state", 90)
    truth = seeded(seed=12, visitors=500, now=int(time.time() * 1000))
    producing = asyncio.create_task(produce_steps(broker.bootstrap, truth.steps, pause=0.05))

    at_kill = await wait_processed(worker, int(truth.events * 0.5), timeout=120)
    worker.kill()
    assert 0 < at_kill < truth.events, f"not killed mid-run: {at_kill} of {truth.events} judged"
    await asyncio.sleep(1.0)
    worker.restart()
    await producing

    model = await wait_model(broker.bootstrap, truth, CONVERGE_S)
    assert_model_exact(model, truth)


async def test_the_chain_moves_with_its_partition_when_its_worker_is_killed_and_stays_exact(
    broker: KafkaBroker, redis_url: str, make_worker: Callable[..., WorkerProcess]
) -> None:
    """Two workers share the partitions; the one that owns partition 0 (the chain) is killed mid-run: the other
    takes its paths and the chain over, and the model still counts every path exactly."""
    workers = [make_worker(bootstrap=broker.bootstrap, env=worker_env(redis_url), name=f"markov-pair-{i}")
               for i in (1, 2)]
    for worker in workers:
        await asyncio.to_thread(worker.wait_http, "/api/v1/state", 90)

    def owned(worker: WorkerProcess) -> set[int]:
        return set(http_json(worker, "/api/v1/state")["journey_partitions"])

    def split() -> bool:
        first, second = owned(workers[0]), owned(workers[1])
        return bool(first) and bool(second) and not first & second and first | second == set(range(4))

    assert await poll(split, timeout=60), "the two workers never shared the partitions"
    victim, survivor = workers if 0 in owned(workers[0]) else workers[::-1]
    truth = seeded(seed=13, visitors=500, now=int(time.time() * 1000))
    producing = asyncio.create_task(produce_steps(broker.bootstrap, truth.steps, pause=0.05))

    await wait_processed(victim, int(truth.events * 0.2), timeout=120)
    victim.kill()
    await producing
    assert await poll(lambda: owned(survivor) == set(range(4)), timeout=60), "the survivor did not take over"

    model = await wait_model(broker.bootstrap, truth, CONVERGE_S)
    assert_model_exact(model, truth)
    assert gauge_values(survivor) == pytest.approx({m["channel"]: m["share"] for m in model})
