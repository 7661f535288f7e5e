"""The newcomer's commands against a real Apache Kafka broker: simulate, affiliates load, replay, top --once.

The session's broker is shared with other tests, so each test marks its own data (a seed, a
run id, far-future windows) and looks only at that.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.commands.simulator import AFFILIATE_RECORDS
from streams.config import Settings
from streams.core.affiliates import Affiliate, parse_affiliate
from streams.core.events import INPUT_TOPICS, TOPIC_TYPES, validate
from streams.core.kpis import Figures, metrics_message
from streams.kafka.topics import AFFILIATES_TOPIC, DLQ_TOPIC, METRICS_CHANNEL_TOPIC, SIGNALS_TOPIC, ensure_topics
from tests.integration.services import WorkerProcess, consume_all, produce

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "deploy" / "affiliates.sample.json"


def attribution(*args: str, bootstrap: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "PYTHONPATH": str(ROOT)}
    return subprocess.run(  # noqa: S603 - our own command
        [sys.executable, "-m", "streams.commands.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def elements(records: list, marker: str) -> list[tuple[str, object]]:
    """(topic, element) of every array element (or single value) whose JSON text contains `marker`."""
    out = []
    for record in records:
        if marker.encode() not in record.value:
            continue
        try:
            value = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            out.append((record.topic, record.value))
            continue
        for element in value if isinstance(value, list) else [value]:
            if marker in orjson.dumps(element).decode():
                out.append((record.topic, element))
    return out


def test_simulate_sends_a_campaign_in_batches_to_the_input_topics(kafka_bootstrap: str) -> None:
    seed = random.randrange(10**6, 10**7)
    started = time.time()
    result = attribution("simulate", "--rate", "2000", "--duration", "7s", "--seed", str(seed),
                         bootstrap=kafka_bootstrap)
    ended = time.time()
    assert result.returncode == 0, result.stderr
    assert "simulate: " in result.stderr and "events in" in result.stderr

    records = asyncio.run(consume_all(kafka_bootstrap, [*INPUT_TOPICS, AFFILIATES_TOPIC], timeout=60))
    mine = [r for r in records if r.topic in INPUT_TOPICS and f"s{seed}-".encode() in r.value]
    assert all(isinstance(orjson.loads(r.value), list) and len(orjson.loads(r.value)) <= 50 for r in mine)
    sent = elements(mine, f"s{seed}-")
    assert 12_000 <= len(sent) <= 16_000  # 7 s at 2,000 events/s
    valid_topics = {topic for topic, element in sent if not isinstance(validate(element, topic, Settings()), str)}
    assert {"impressions", "clicks", "spend"} <= valid_topics  # orders follow clicks some seconds later

    settings = Settings()
    results = [(topic, element, validate(element, topic, settings)) for topic, element in sent]
    rejected = [r for r in results if isinstance(r[2], str)]
    assert 0 < len(rejected) < 0.02 * len(sent)  # the malformed half percent, for the dead-letter topic
    for _, element, event in results:
        if not isinstance(event, str):
            assert started * 1000 - 1000 <= event.ts <= ended * 1000 + 1000, element  # ts = now: live windows

    published = {r.key.decode(): parse_affiliate(orjson.loads(r.value)) for r in records if r.topic == AFFILIATES_TOPIC}
    for record in AFFILIATE_RECORDS:
        assert published[record["affiliate_id"]] == parse_affiliate(record)


def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    async def describe() -> dict[str, str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        finally:
            await admin.close()
        configs: dict[str, str] = {}
        for response in responses:
            for resource in response.resources:
                for entry in resource[4]:
                    configs[entry[0]] = entry[1]
        return configs

    return asyncio.run(describe())


def test_events_dlq_is_kept_for_dlq_retention_also_when_it_existed_before(kafka_bootstrap: str) -> None:
    """Rejected inputs carry raw identifiers (CONTRACT.md section 10): `events.dlq` keeps them DLQ_RETENTION."""
    try:
        for retention, ms in (("2d", 172_800_000), ("7d", 604_800_000)):  # made (or set) first, then set again
            settings = Settings.from_env({"TOPIC_PARTITIONS": "8", "DLQ_RETENTION": retention})
            asyncio.run(ensure_topics(kafka_bootstrap, settings))
            deadline = time.monotonic() + 15  # the brokers apply a changed topic config a moment later
            while (kept := _topic_config(kafka_bootstrap, DLQ_TOPIC)["retention.ms"]) != str(ms):
                assert time.monotonic() < deadline, f"events.dlq keeps {kept} ms, not {ms}"
                time.sleep(0.2)
    finally:
        asyncio.run(ensure_topics(kafka_bootstrap, Settings(topic_partitions=8)))  # the default, for the others


def test_affiliates_load_publishes_valid_records_to_the_compacted_topic(kafka_bootstrap: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    records = [
        {"affiliate_id": f"blog_{run}", "channel": "affiliate", "commission_rate": 0.07},
        {"affiliate_id": f"star_{run}", "channel": "influencer", "promo_codes": [f"STAR{run}"],
         "commission_rate": 0.1, "assist_fee": 1.5},
        {"affiliate_id": f"bad_{run}", "channel": "influencer", "commission_rate": 3},
    ]
    path = tmp_path / "affiliates.json"
    path.write_bytes(orjson.dumps(records))
    result = attribution("affiliates", "load", str(path), bootstrap=kafka_bootstrap)
    assert result.returncode == 1  # one record rejected
    assert "published 2 affiliate record(s) to topic affiliates; 1 rejected" in result.stdout
    assert "record 2: commission_rate must be smaller than or equal to 1, got 3" in result.stderr

    consumed = asyncio.run(consume_all(kafka_bootstrap, AFFILIATES_TOPIC, timeout=30))
    published = {r.key.decode(): orjson.loads(r.value) for r in consumed if run.encode() in r.key}
    assert published == {
        f"blog_{run}": {"affiliate_id": f"blog_{run}", "channel": "affiliate", "promo_codes": [],
                        "commission_rate": 0.07, "assist_fee": 0.0},
        f"star_{run}": {"affiliate_id": f"star_{run}", "channel": "influencer", "promo_codes": [f"STAR{run}"],
                        "commission_rate": 0.1, "assist_fee": 1.5},
    }
    assert isinstance(parse_affiliate(published[f"star_{run}"]), Affiliate)
    assert _topic_config(kafka_bootstrap, AFFILIATES_TOPIC)["cleanup.policy"] == "compact"

    sample = attribution("affiliates", "load", str(SAMPLE), bootstrap=kafka_bootstrap)
    assert sample.returncode == 0, sample.stderr
    assert "published 6 affiliate record(s) to topic affiliates" in sample.stdout


def test_replay_lands_every_line_on_the_topic_of_its_type(kafka_bootstrap: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:10]
    kinds = list(TOPIC_TYPES.values())
    events = []
    for i in range(230):
        kind = kinds[i % len(kinds)]
        event = {"event_id": f"{run}-{i}", "type": kind, "tracking_id": f"t-{run}-{i // 5}",
                 # last year's events keep their own time: an ISO string or epoch ms, unchanged
                 "ts": "2024-03-01T10:00:00+01:00" if i % 2 else 1_709_283_600_000 + i, "channel": "email"}
        events.append(event)
    lines = [orjson.dumps(e) for e in events]
    broken = f'{{"event_id": "{run}-broken", "type": "click", "ts": 17'.encode()
    unknown = orjson.dumps({"event_id": f"{run}-chargeback", "type": "chargeback"})
    lines[10:10] = [broken]
    lines[20:20] = [b"", unknown]
    path = tmp_path / "backfill.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = attribution("replay", str(path), bootstrap=kafka_bootstrap)
    assert result.returncode == 1, result.stdout + result.stderr  # the chargeback line could not be sent anywhere
    assert "replayed 231 events" in result.stdout
    assert "line 11: not JSON" in result.stdout and "sent as-is to clicks" in result.stdout
    assert 'line 22: unknown type "chargeback"' in result.stdout

    records = asyncio.run(consume_all(kafka_bootstrap, list(INPUT_TOPICS), timeout=60))
    landed = elements(records, run)
    by_id = {e["event_id"]: (topic, e) for topic, e in landed if isinstance(e, dict)}
    assert set(by_id) == {e["event_id"] for e in events}
    for event in events:
        topic, element = by_id[event["event_id"]]
        assert TOPIC_TYPES[topic] == event["type"]
        assert element == event  # ts and every field as in the file
    assert ("clicks", broken) in landed
    assert len(landed) == len(events) + 1


def test_top_once_renders_the_figures_on_the_metric_topic(kafka_bootstrap: str) -> None:
    run = uuid.uuid4().hex[:6]
    google, tiktok = f"google_{run}", f"tiktok_{run}"
    window = 10_000
    # far in the future, so that these are the newest windows whatever else the shared broker holds
    start = 4_102_444_800_000 + random.randrange(10**6) * window
    messages = [
        metrics_message(google, None, start - window, window, True, Figures(900, 30, 3.0, 2.0, 2.0, 150.0, 60.0)),
        metrics_message(tiktok, None, start - window, window, True, Figures(5000, 20, 0.0, 0.0, 0.0, 0.0, 35.0)),
        metrics_message(google, None, start, window, False, Figures(1000, 42, 5.0, 2.0, 1.0, 240.0, 50.0, 96.0)),
        metrics_message(google, None, start, window, False, Figures(1234, 56, 5.0, 4.0, 1.0, 480.0, 80.0, 200.0)),
    ]
    asyncio.run(ensure_topics(kafka_bootstrap, Settings(topic_partitions=8)))
    for msg in messages:
        asyncio.run(produce(kafka_bootstrap, METRICS_CHANNEL_TOPIC, [orjson.dumps(msg)], key=msg["channel"].encode()))
    signal = {"channel": tiktok, "campaign": None, "action": "pause"}
    asyncio.run(produce(kafka_bootstrap, SIGNALS_TOPIC, [orjson.dumps(signal)], key=tiktok.encode()))

    result = attribution("top", "--once", bootstrap=kafka_bootstrap, timeout=60)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    current, _, last = text.partition("last window")
    assert "current window" in current and "(open)" in current
    rows = {line.split()[0]: line.split() for line in current.splitlines() if line.split()[:1] == [google]}
    # the newer message of the window wins: 1,234 impressions, not 1,000
    assert rows[google][:12] == [google, "—", "1,234", "56", "5", "4", "480.00", "80.00", "200.00", "4.54%", "1.43",
                                 "64.83"]
    assert rows[google][-3:] == ["6.00x", "+500%", "+150%"]
    last_rows = {cells[0]: cells for cells in map(str.split, last.splitlines()) if cells[:1] in ([google], [tiktok])}
    assert "(final)" in last
    assert last_rows[tiktok][:4] == [tiktok, "pause", "5,000", "20"]
    assert last_rows[tiktok][7] == "35.00"
    assert last_rows[google][2:8] == ["900", "30", "3", "2", "150.00", "60.00"]


def test_a_worker_in_a_fresh_clone_creates_its_state_dir(
    kafka_bootstrap: str, redis_url: str, make_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """A fresh clone has no `.run/`: the default STATE_DIR's parent is missing (it crashed with FileNotFoundError)."""
    state_dir = tmp_path / "clone" / ".run" / "state"
    worker = make_worker(bootstrap=kafka_bootstrap, env={"STATE_DIR": str(state_dir), "REDIS_URL": redis_url},
                         name="fresh-clone")
    worker.wait_http("/api/v1/state", 90)
    assert state_dir.is_dir() and worker.alive


def test_a_worker_whose_state_dir_cannot_be_made_says_which_and_why(kafka_bootstrap: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {**os.environ, "KAFKA_BOOTSTRAP": kafka_bootstrap, "STATE_DIR": str(blocker / "state"),
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run(  # noqa: S603 - our own command
        [sys.executable, "-m", "streams.commands.cli", "worker"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"STATE_DIR={blocker / 'state'} cannot be created" in result.stderr
