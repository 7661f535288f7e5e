"""Session fixtures for the real services: Apache Kafka, Redis, the embedded Tansu broker, workers.

A missing Java, Maven or Redis is a failure, not a skip: CI runs these tests (see `make test`).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # `tests.integration.services` without installing the tests
    sys.path.insert(0, str(_ROOT))

from streams.kafka.embedded_broker import EmbeddedBroker, EmbeddedBrokerError  # noqa: E402
from tests.integration.services import (  # noqa: E402
    BROWSER_USER_AGENT,
    KafkaBroker,
    RedisServer,
    ServiceError,
    WorkerProcess,
    fetch_kafka,
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs tests in parallel (pytest-xdist, `--dist loadgroup`): a module whose tests share a module- or
    class-scoped fixture (a worker, a broker, a produced scenario) runs on one xdist worker, so that the fixture is
    set up once; the tests of other modules are spread one by one. First: xdist's own hook reads the marks
    (tests/ops/test_xdist_grouping.py)."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        definitions = fixtures.name2fixturedefs.values() if fixtures else ()
        if any(d.scope in ("module", "class") for defs in definitions for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.fixture(scope="session")
def kafka_broker_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], KafkaBroker]]:
    """Start a private Apache Kafka broker (free port, own data dir); all are stopped at the end.

    For tests that stop, restart or kill a broker without disturbing the shared one.
    """
    brokers: list[KafkaBroker] = []

    def start() -> KafkaBroker:
        try:
            fetch_kafka()
            broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
            brokers.append(broker)
            broker.start()
        except ServiceError as exc:
            pytest.fail(f"Apache Kafka could not be started: {exc}", pytrace=False)
        return broker

    yield start
    errors = []
    for broker in brokers:
        try:
            broker.stop()
        except ServiceError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("stopping Kafka brokers failed:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture(scope="session")
def kafka_broker(kafka_broker_factory: Callable[[], KafkaBroker]) -> KafkaBroker:
    """The shared Apache Kafka 4.1.1 broker of the session (`deploy/kafka/kafka.sh`)."""
    return kafka_broker_factory()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """`127.0.0.1:PORT` of the shared Apache Kafka broker."""
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`redis://127.0.0.1:PORT/0` of a session redis-server (`deploy/redis/redis.sh`), in memory only."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        url = server.start()
    except ServiceError as exc:
        pytest.fail(f"Redis could not be started: {exc}", pytrace=False)
    yield url
    server.stop()


@pytest.fixture(scope="session")
def tansu_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The embedded Tansu broker (`streams.kafka.embedded_broker`), as `attribution demo` runs it."""
    broker = EmbeddedBroker(run_dir=tmp_path_factory.mktemp("tansu"))
    try:
        broker.start()
    except EmbeddedBrokerError as exc:
        pytest.fail(f"the embedded broker could not be started: {exc}", pytrace=False)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def tansu_bootstrap(tansu_broker: EmbeddedBroker) -> str:
    return tansu_broker.bootstrap


@pytest.fixture
def make_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """`make_worker(bootstrap=..., env={...}, name=...)` -> a started WorkerProcess; all are stopped after the test.

    Logs and state dirs go to the test's tmp_path; a worker's log is printed when the test fails
    (pytest shows captured output of failing tests).
    """
    workers: list[WorkerProcess] = []

    def make(**kwargs: object) -> WorkerProcess:
        kwargs.setdefault("log_dir", tmp_path)
        worker = WorkerProcess(**kwargs)  # type: ignore[arg-type]
        workers.append(worker)
        return worker.start()

    yield make
    for worker in workers:
        worker.stop(timeout=15)
        print(f"--- {worker.name} log ({worker.log_path}) ---\n{worker.tail(80)}")


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's chromium, headless at 1280x800, through chromium-driver (deploy/system-deps.sh installs both; a
    missing one fails the test)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(path), f"{path} is missing: deploy/system-deps.sh installs chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,800", "--hide-scrollbars", "--force-device-scale-factor=1",
                     f"--user-agent={BROWSER_USER_AGENT}"):  # a headless one says HeadlessChrome: a bot
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(1280, 800)
    yield driver
    driver.quit()
