"""Hostile input (CONTRACT.md sections 2, 4, 5 and 6): nothing a producer sends can crash the engine or vanish.

Hypothesis draws thousands of inputs: random bytes, random JSON (deep, huge numbers, NaN, odd unicode),
and valid events of every type with one or more fields mutated (wrong types, out-of-range numbers,
bad timestamps and currencies, over-long ids, the wrong topic), alone or in JSON-array batches that
mix valid and broken elements, plus verbatim repeats. They go to every input topic of a broker of this
module's own with one running worker, in rounds. After each round the worker must be alive, and every
input must be accounted for exactly once:

    DLQ records + ok + duplicate + late (attribution_events_total) == inputs (elements of a batch each)

and the `invalid` counter per type must equal the DLQ records per topic, each record pointing at the
input (topic, partition, offset, batch index) it came from and carrying its raw value.

The collector's batch API and pixel get the same treatment in process (`streams.commands.collector.build_app`
with aiohttp's test server and a producer that records what it is given): never a 5xx, every rejection
says why, and what is accepted is exactly what is produced, each event valid.

Sizes: FUZZ_MESSAGES (default 1,200 worker messages, with 5% verbatim repeats ~3,100 inputs) and
FUZZ_REQUESTS (default 450 batch requests, and a third as many pixel requests);
FUZZ_SEED picks the draw (printed, so a failure can be replayed).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import string
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tests.integration.reliability_support import (
    TOPIC_OF,
    TYPE_OF,
    now_ms,
    outcomes,
    poll,
)
from tests.integration.services import BROWSER_USER_AGENT, KafkaBroker, WorkerProcess, consume_all, produce

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PARTITIONS = 4
MESSAGES = int(os.environ.get("FUZZ_MESSAGES", "1200"))
REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "450"))
SEED = int(os.environ.get("FUZZ_SEED", "20251124"))
ROUNDS = 4
TYPES = tuple(TOPIC_OF)
INPUT_TOPICS = tuple(TYPE_OF)
WRITE_KEY = "fuzz-key"


# --- what hypothesis draws -------------------------------------------------------------------------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["", "0", "-1", "1e999", "2025-11-24T10:00:00", "2025-11-24T10:00:00Z", "EUR", "USD",
                      "click", "order", "\u0000", "\ud7ff\ue000", "|", "a|b", "\x00spend/x"])
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)
FIELDS = ("event_id", "type", "ts", "tracking_id", "channel", "campaign", "affiliate_id", "cost", "order_id",
          "revenue", "currency", "promo_code", "margin", "customer_id", "amount")
SPECIAL = {  # values near or past the rules of CONTRACT.md section 2
    "ts": [-1, 0, 1.5, 253402300799999, 253402300800000, 2**63, "2025-11-24T10:00:00", "2025-11-24T10:00:00+14:00",
           "0001-01-01T00:00:00+01:00", "2025-13-01T00:00:00Z", "yesterday", 1.7e12, True],
    "revenue": [-0.01, 1e308, "12", None, True, 0],
    "amount": [-5, 1e308, "3", 0, float("inf")],
    "cost": [-1, 1e300, "0.1"],
    "margin": [-0.1, 1.0000001, 1, 0, "0.5"],
    "currency": ["EUR", "usd", "XXX", "US", "", None],
    "event_id": ["", "x" * 129, 12, None],
    "tracking_id": ["", "t" * 129, ["a"], "\x00spend/google_ads"],
    "channel": ["", "c" * 65, "a|b", "(direct)", 7],
    "order_id": ["", "o" * 129],
    "customer_id": ["", 5],
    "type": ["impression", "click", "lead", "order", "spend", "Click", "", None],
}


@st.composite
def valid_events(draw: st.DrawFn, kind: str | None = None) -> dict[str, Any]:
    kind = kind or draw(st.sampled_from(TYPES))
    run = draw(st.sampled_from(["a", "b", "c"]))
    n = draw(st.integers(0, 10**9))
    tid = f"fz-{run}-{draw(st.integers(0, 300))}"
    ts: Any = now_ms() - draw(st.integers(0, 900_000))
    if draw(st.integers(0, 9)) == 0:
        ts = "2025-11-24T10:00:00.123+02:00"
    event: dict[str, Any] = {"event_id": f"fz-{run}-{kind}-{n}", "type": kind, "ts": ts}
    if kind != "spend":
        event["tracking_id"] = tid
    if kind in ("impression", "click", "spend"):
        event["channel"] = draw(st.sampled_from(["google_ads", "facebook", "email", "tiktok"]))
        if draw(st.booleans()):
            event["campaign"] = draw(st.sampled_from(["brand", "generic", "(none)"]))
    if kind in ("impression", "click") and draw(st.booleans()):
        event["cost"] = draw(st.floats(0, 5))
    if kind == "order":
        event["order_id"] = f"fz-{run}-o-{n}"
        event["revenue"] = draw(st.floats(0, 1000))
        if draw(st.booleans()):
            event["customer_id"] = f"fz-cust-{draw(st.integers(0, 50))}"
    if kind == "spend":
        event["amount"] = draw(st.floats(0, 100))
    return event


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    event = draw(valid_events())
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "special", "random", "extra"]))
        name = draw(st.sampled_from(FIELDS))
        if action == "drop":
            event.pop(name, None)
        elif action == "special" and name in SPECIAL:
            event[name] = draw(st.sampled_from(SPECIAL[name]))
        elif action == "random":
            event[name] = draw(json_values)
        else:
            event[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    return event


def dumps(value: Any) -> bytes:
    """JSON text as a sloppy producer would write it: NaN, Infinity and 70-bit integers included."""
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


@st.composite
def worker_inputs(draw: st.DrawFn) -> tuple[str, bytes | None]:
    """One message for an input topic."""
    topic = draw(st.sampled_from(INPUT_TOPICS))
    shape = draw(st.sampled_from(["bytes", "json", "valid", "mutated", "batch", "batch", "empty"]))
    if shape == "bytes":
        return topic, draw(st.binary(max_size=200))
    if shape == "json":
        return topic, dumps(draw(json_values))
    if shape == "empty":
        return topic, draw(st.sampled_from([None, b"", b"[]", b"{}", b" ", b"null"]))
    if shape in ("valid", "mutated"):
        event = draw(valid_events(TYPE_OF[topic]) if shape == "valid" else mutated_events())
        return topic, dumps(event)
    elements = draw(st.lists(st.one_of(valid_events(TYPE_OF[topic]), mutated_events(), json_values), min_size=1,
                             max_size=12))
    return topic, dumps(elements)


def draw_many(strategy: st.SearchStrategy[Any], count: int, seed: int) -> list[Any]:
    """`count` examples of `strategy`, drawn by hypothesis itself (its edge-case heuristics included)."""
    drawn: list[Any] = []

    @hypothesis_seed(seed)
    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: Any) -> None:
        drawn.append(value)

    collect()
    return drawn


def elements(value: bytes | None) -> int:
    """How many inputs the contract counts in one message: each element of a non-empty array, else one."""
    try:
        decoded = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return 1
    return len(decoded) if isinstance(decoded, list) and decoded else 1


def raw_text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", errors="replace")


# --- the worker ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_worker(
    kafka_broker_factory: Callable[[], KafkaBroker], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KafkaBroker, WorkerProcess]]:
    broker = kafka_broker_factory()
    env = {"TOPIC_PARTITIONS": str(PARTITIONS), "ATTRIBUTION_GRACE": "500ms", "FX_RATES": "EUR=1.1"}
    worker = WorkerProcess(env, bootstrap=broker.bootstrap, log_dir=tmp_path_factory.mktemp("fuzz"), name="fuzz")
    worker.start()
    try:
        worker.wait_http("/api/v1/state", timeout=90)
        yield broker, worker
    finally:
        worker.stop(timeout=15)
        print(f"--- {worker.name} log ---\n{worker.tail(60)}")
        broker.stop()


def accounted(worker: WorkerProcess) -> tuple[int, Counter]:
    """ok + duplicate + late, and invalid per type, from the worker's counters."""
    counts = outcomes(worker)
    judged = sum(v for (_, outcome), v in counts.items() if outcome in ("ok", "duplicate", "late"))
    invalid = Counter({kind: v for (kind, outcome), v in counts.items() if outcome == "invalid" and v})
    return judged, invalid


async def test_every_fuzzed_input_is_dead_lettered_or_counted_and_the_worker_survives(
    fuzz_worker: tuple[KafkaBroker, WorkerProcess],
) -> None:
    broker, worker = fuzz_worker
    messages: list[tuple[str, bytes | None]] = draw_many(worker_inputs(), MESSAGES, SEED)
    rng = random.Random(SEED)
    messages += rng.sample(messages, len(messages) // 20)  # verbatim repeats: duplicates, or DLQ'd again
    rng.shuffle(messages)
    print(f"fuzz: seed {SEED}, {len(messages)} messages, {sum(elements(v) for _, v in messages)} inputs")

    produced: dict[tuple[str, int, int], bytes | None] = {}
    expected = 0
    dlq: list[dict[str, Any]] = []
    judged = 0
    for number in range(ROUNDS):
        chunk = messages[number::ROUNDS]
        for topic in INPUT_TOPICS:
            for key in (None, b"fuzz"):  # a message with no value needs a key (a tombstone)
                values = [value for t, value in chunk if t == topic and (value is None) == (key is not None)]
                if values:
                    metas = await produce(broker.bootstrap, topic, values, key=key)
                    for meta, value in zip(metas, values, strict=True):
                        produced[topic, meta.partition, meta.offset] = value
        expected += sum(elements(value) for _, value in chunk)

        async def balanced(expected: int = expected) -> bool:
            nonlocal dlq, judged
            dlq = [orjson.loads(r.value) for r in await consume_all(broker.bootstrap, "events.dlq", timeout=15)]
            judged, _ = await asyncio.to_thread(accounted, worker)
            return len(dlq) + judged >= expected

        await poll(balanced, timeout=60, interval=1.0)
        assert worker.alive, f"the worker died in round {number + 1}:\n{worker.tail(60)}"
        assert len(dlq) + judged == expected, (
            f"round {number + 1}: {len(dlq)} DLQ records + {judged} ok/duplicate/late != {expected} inputs"
        )

    await asyncio.sleep(2.0)  # anything counted twice would show by now
    judged, invalid = await asyncio.to_thread(accounted, worker)
    dlq = [orjson.loads(r.value) for r in await consume_all(broker.bootstrap, "events.dlq", timeout=15)]
    assert len(dlq) + judged == expected
    per_topic = Counter(TYPE_OF[record["topic"]] for record in dlq)
    assert invalid == per_topic, "the invalid counters disagree with the DLQ"
    per_message: Counter = Counter()
    for record in dlq:
        key = (record["topic"], record["partition"], record["offset"])
        assert key in produced, f"a DLQ record for no input of ours: {record}"
        per_message[key] += 1
        assert isinstance(record["error"], str) and record["error"], record
        assert record["value"] == raw_text(produced[key]), record
        count = elements(produced[key])
        if record["index"] is None:
            assert per_message[key] == 1, f"a whole message dead-lettered twice: {record}"
        else:
            assert 0 <= record["index"] < count, record
    assert all(per_message[key] <= elements(value) for key, value in produced.items())
    seen = {outcome for (_, outcome), count in (await asyncio.to_thread(outcomes, worker)).items() if count}
    assert seen == {"ok", "invalid", "duplicate", "late"}, f"the fuzz never reached some outcomes: {seen}"
    assert worker.alive
    assert "Traceback" not in worker.log_text(), worker.tail(80)


# --- the collector -----------------------------------------------------------------------------------------


class RecordingProducer:
    """Stands in for AIOKafkaProducer: `send` is acknowledged at once and remembered."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None, **_: Any) -> asyncio.Future[None]:
        self.sent.append((topic, key, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


@st.composite
def batch_requests(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """Headers and a body for POST /v1/events."""
    auth = draw(st.sampled_from([f"Bearer {WRITE_KEY}"] * 6 + ["", "Bearer", "Bearer wrong", f"bearer {WRITE_KEY}",
                                                                "Basic Zm9vOmJhcg==", f"Bearer  {WRITE_KEY} "]))
    headers = {"Authorization": auth} if auth else {}
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(["application/json", "application/x-ndjson", "text/plain",
                                                        "multipart/form-data; boundary=x", "application/xml"]))
    shape = draw(st.sampled_from(["array", "array", "lines", "json", "bytes", "huge"]))
    if shape == "array":
        items = draw(st.lists(st.one_of(valid_events(), mutated_events(), json_values), max_size=15))
        return headers, dumps(items)
    if shape == "lines":
        items = draw(st.lists(st.one_of(valid_events(), mutated_events(), json_values), min_size=1, max_size=8))
        lines = [dumps(item) for item in items]
        if draw(st.integers(0, 4)) == 0:
            lines.insert(draw(st.integers(0, len(lines))), draw(st.binary(max_size=20)))
        return headers, b"\n".join(lines)
    if shape == "json":
        return headers, dumps(draw(json_values))
    if shape == "huge":
        return headers, b"[" + b" " * (1024 * 1024) + b"]"
    return headers, draw(st.binary(max_size=300))


@st.composite
def pixel_requests(draw: st.DrawFn) -> dict[str, str]:
    names = st.sampled_from(["e", "tid", "ch", "cmp", "aff", "cid", "eid", "ts", "x"])
    values = st.one_of(st.sampled_from(["impression", "click", "lead", "order", "spend", "", "google_ads", "0",
                                        "2025-11-24T10:00:00Z", "-5", "c" * 70]),
                       st.text(alphabet=string.printable, max_size=30))
    params = draw(st.dictionaries(names, values, max_size=7))
    if draw(st.integers(0, 2)):  # mostly a plausible pixel, with the odds and ends around it
        params["e"] = draw(st.sampled_from(["impression", "click", "lead"]))
        params.setdefault("ch", "google_ads")
    return params


async def test_the_collector_never_answers_5xx_and_every_rejection_says_why() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from streams.commands.collector import build_app, parse_batch
    from streams.config import Settings
    from streams.core.events import validate

    settings = Settings(collector_keys=(WRITE_KEY,), fx_rates={"USD": 1.0, "EUR": 1.1})
    producer = RecordingProducer()
    requests = draw_many(batch_requests(), REQUESTS, SEED)
    pixels = draw_many(pixel_requests(), REQUESTS // 3, SEED + 1)
    statuses: Counter = Counter()
    async with TestClient(TestServer(build_app(settings, producer, bootstrap="127.0.0.1:9"))) as client:
        for headers, body in requests:
            before = len(producer.sent)
            response = await client.post("/v1/events", data=body, headers=headers)
            statuses[response.status] += 1
            assert response.status < 500, (response.status, headers, body[:300], await response.text())
            answer = await response.json(content_type=None)
            produced = producer.sent[before:]
            if response.status == 202:
                assert answer["accepted"] == len(produced), (answer, body[:300])
                assert answer["accepted"] + len(answer["rejected"]) == len(parse_batch(body)), answer
                for item in answer["rejected"]:
                    assert isinstance(item["index"], int) and isinstance(item["error"], str) and item["error"]
                for topic, _, value in produced:
                    assert not isinstance(validate(orjson.loads(value), topic, settings), str), value
            else:
                assert response.status in (400, 401, 413), response.status
                assert isinstance(answer.get("error"), str) and answer["error"], (response.status, answer)
                assert produced == [], "a refused request produced events"
        for params in pixels:
            before = len(producer.sent)
            response = await client.get("/px", params=params, headers={"User-Agent": BROWSER_USER_AGENT})
            statuses[f"px {response.status}"] += 1
            assert response.status < 500, (response.status, params, await response.text())
            if response.status == 200:
                assert response.headers["Content-Type"] == "image/gif"
                assert len(producer.sent) == before + 1
                topic, _, value = producer.sent[-1]
                assert topic in ("impressions", "clicks", "leads")
                assert not isinstance(validate(orjson.loads(value), topic, settings), str), value
            else:
                answer = await response.json(content_type=None)
                assert response.status == 400 and answer["error"], (response.status, answer)
                assert len(producer.sent) == before
    print(f"collector fuzz: seed {SEED}, {len(requests)} batch and {len(pixels)} pixel requests, {dict(statuses)}")
    assert statuses[202] and statuses[401] and statuses[400] and statuses[413], statuses
