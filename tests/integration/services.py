"""Real services for integration tests: Apache Kafka, Redis, the embedded Tansu broker, and workers.

Brokers and servers are started by the same scripts a developer uses (deploy/kafka/kafka.sh,
deploy/redis/redis.sh), each on a free port with its own data dir, and they stop themselves if
the test process dies (the scripts' *_PARENT_PID watchdogs), so a killed run leaves nothing behind.

    from tests.integration.services import consume_all, create_topics, produce, WorkerProcess
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import RecordMetadata

from streams.kafka.embedded_broker import _pdeathsig_hook, broker_answers

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
REDIS_SH = ROOT / "deploy" / "redis" / "redis.sh"

Records = list[ConsumerRecord]

_TOPIC_ALREADY_EXISTS = 36

# A desktop browser's User-Agent: the collector answers known bots and crawlers (curl, aiohttp, HeadlessChrome) with
# the GIF and produces nothing (CONTRACT.md section 9), so a test that plays a visitor's browser says it is one.
BROWSER_USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
                      "Safari/537.36")


class ServiceError(RuntimeError):
    """A service could not be fetched, started or stopped; the message carries the script's output."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _script(
    argv: Sequence[str | os.PathLike[str]], env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    command = " ".join(str(part) for part in argv)
    try:
        result = subprocess.run(
            [str(part) for part in argv],
            env={**os.environ, **env},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"`{command}` did not finish within {timeout:.0f}s:\n{exc.stderr or ''}") from None
    if result.returncode != 0:
        raise ServiceError(
            f"`{command}` failed with exit status {result.returncode}:\n"
            f"{result.stderr.strip()}\n{result.stdout.strip()}".rstrip()
        )
    return result


def fetch_kafka(timeout: float = 600.0) -> None:
    """`deploy/kafka/kafka.sh fetch`: the Apache Kafka jars from Maven Central (instant when already there)."""
    _script([KAFKA_SH, "fetch"], {}, timeout)


class KafkaBroker:
    """An Apache Kafka 4.1.1 broker run by deploy/kafka/kafka.sh on one port and one data dir.

    `restart()` stops it and starts it again on the same port and data dir: topics, messages
    and committed offsets survive. `kill()` is a crash (SIGKILL), after which `start()` recovers.
    """

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.startup_seconds: float | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data_dir / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _env(self) -> dict[str, str]:
        return {"KAFKA_DATA_DIR": str(self.data_dir), "KAFKA_PARENT_PID": str(os.getpid())}

    def start(self, timeout: float = 120.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        result = _script([KAFKA_SH, "start", str(self.port)], self._env(), timeout)
        match = re.search(r"ready on \S+ in ([0-9.]+)s", result.stderr)
        self.startup_seconds = float(match.group(1)) if match else None
        bootstrap = result.stdout.strip().splitlines()[-1]
        if bootstrap != self.bootstrap:
            raise ServiceError(f"kafka.sh start printed {bootstrap!r}, expected {self.bootstrap!r}")
        return bootstrap

    def stop(self, timeout: float = 60.0) -> None:
        _script([KAFKA_SH, "stop", str(self.port)], self._env(), timeout)

    def restart(self) -> str:
        self.stop()
        return self.start()

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would; `start()` brings it back on the same data."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10.0)

    def running(self) -> bool:
        return broker_answers(self.bootstrap)

    def log_text(self) -> str:
        return _read(self.data_dir / "server.log")


class KafkaCluster:
    """Apache Kafka brokers in one KRaft quorum (`deploy/kafka/kafka.sh cluster start N`), each a `KafkaBroker`
    of its own to kill or restart: a node keeps its ports and place in the cluster in its data dir."""

    def __init__(self, cluster_dir: str | os.PathLike[str], size: int = 3) -> None:
        self.cluster_dir = Path(cluster_dir)
        self.size = size
        self.nodes: list[KafkaBroker] = []

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def _env(self) -> dict[str, str]:
        return {"KAFKA_CLUSTER_DIR": str(self.cluster_dir), "KAFKA_PARENT_PID": str(os.getpid())}

    def start(self, timeout: float = 180.0) -> str:
        result = _script([KAFKA_SH, "cluster", "start", str(self.size)], self._env(), timeout)
        ports = [int(server.rsplit(":", 1)[1]) for server in result.stdout.strip().splitlines()[-1].split(",")]
        self.nodes = [KafkaBroker(self.cluster_dir / f"node-{i}", port) for i, port in enumerate(ports, start=1)]
        return self.bootstrap

    def stop(self, timeout: float = 90.0) -> None:
        _script([KAFKA_SH, "cluster", "stop"], self._env(), timeout)


class RedisServer:
    """redis-server run by deploy/redis/redis.sh on one port: in memory only, or with its append-only file."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None, appendonly: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _env(self) -> dict[str, str]:
        return {"REDIS_DIR": str(self.data_dir), "REDIS_PARENT_PID": str(os.getpid()),
                "REDIS_APPENDONLY": "yes" if self.appendonly else "no"}

    def start(self, timeout: float = 30.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        result = _script([REDIS_SH, "start", str(self.port)], self._env(), timeout)
        return result.stdout.strip().splitlines()[-1]

    def stop(self, timeout: float = 30.0) -> None:
        _script([REDIS_SH, "stop", str(self.port)], self._env(), timeout)


# --- Kafka client helpers ---------------------------------------------------------------------------


async def create_topics(
    bootstrap: str, names: Sequence[str], partitions: int = 1, *, timeout: float = 30.0, replication: int = 1
) -> None:
    """Create the topics that do not exist yet (`replication` copies of each partition), and wait until their
    metadata shows them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in names if name not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(name, num_partitions=partitions, replication_factor=replication) for name in missing],
                timeout_ms=int(timeout * 1000),
            )
            for topic_error in getattr(response, "topic_errors", ()):
                name, code = topic_error[0], topic_error[1]
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    message = topic_error[2] if len(topic_error) > 2 else ""
                    raise ServiceError(f"creating topic {name!r} failed: error code {code} {message or ''}".strip())
        deadline = time.monotonic() + timeout
        while not set(names) <= set(await admin.list_topics()):
            if time.monotonic() > deadline:
                raise ServiceError(f"topics {sorted(set(names))} did not appear within {timeout:.0f}s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes],
    key: bytes | None = None,
    *,
    partition: int | None = None,
) -> list[RecordMetadata]:
    """Send `values` to `topic` (acks=all) and return their metadata once the broker has them all."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key, partition=partition) for value in values]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def consume_all(
    bootstrap: str,
    topics: Sequence[str] | str,
    until: Callable[[Records], bool] | None = None,
    timeout: float = 10.0,
) -> Records:
    """Read `topics` from the earliest offset without a consumer group.

    Stops when `until(records)` is true, or, without `until`, once every partition has been read
    to its end offset; in any case after `timeout` seconds, returning what was read by then.
    Tansu's end offsets were seen to be wrong: on the embedded broker, pass `until`.
    """
    if isinstance(topics, str):
        topics = [topics]
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    records: Records = []
    deadline = time.monotonic() + timeout
    await consumer.start()
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return records
            batches = await consumer.getmany(timeout_ms=int(min(remaining, 0.2) * 1000))
            for batch in batches.values():
                records.extend(batch)
            if until is not None:
                if until(records):
                    return records
            elif await _caught_up(consumer):
                return records
    finally:
        await consumer.stop()


async def _caught_up(consumer: AIOKafkaConsumer) -> bool:
    assignment: set[TopicPartition] = consumer.assignment()
    if not assignment:
        return False
    ends = await consumer.end_offsets(list(assignment))
    for tp in assignment:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


# --- the engine as a subprocess ----------------------------------------------------------------------


def _attribution_argv() -> list[str]:
    script = Path(sys.executable).with_name("attribution")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from streams.commands.cli import main; sys.exit(main())"]


class WorkerProcess:
    """`attribution worker` (or any `attribution` subcommand) as a subprocess in its own process group.

    The environment is this process's plus `WEB_PORT` (a free port), `WORKER_NAME`, `STATE_DIR`
    (per worker, so that a restarted worker finds its state), `KAFKA_BOOTSTRAP` when given, and
    `env`. The log goes to `log_dir/NAME.log`, appended to on each (re)start.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        bootstrap: str | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        name: str = "worker",
        args: Sequence[str] = ("worker",),
        argv: Sequence[str] | None = None,
        web_port: int | None = None,
    ) -> None:
        self.name = name
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix=f"attribution-{name}-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{name}.log"
        self.web_port = web_port or free_port()
        self.argv = list(argv) if argv is not None else [*_attribution_argv(), *args]
        self.env = {
            **os.environ,
            "WEB_PORT": str(self.web_port),
            "WORKER_NAME": name,
            "STATE_DIR": str(self.log_dir / f"state-{name}"),
            "PYTHONUNBUFFERED": "1",
            # The fraud guards (CONTRACT.md section 9) off, as the acceptance kit runs: the truths of the other tests
            # follow the rules of section 3 alone. tests/integration/test_fraud_guards.py turns them on.
            "MIN_CLICK_GAP": "0",
            "CLICK_FLOOD": "off",
        }
        if bootstrap:
            self.env["KAFKA_BOOTSTRAP"] = bootstrap
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> WorkerProcess:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_pdeathsig_hook(),
            )
        return self

    def restart(self) -> WorkerProcess:
        """Start again after `stop()` or `kill()`, same environment, port and state dir."""
        return self.start()

    def _signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the process group; SIGKILL after `timeout` seconds. Returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait()
        self._signal_group(signal.SIGKILL)  # anything it left in its group
        return self.process.returncode

    def kill(self) -> int | None:
        """SIGKILL to the process group, as a crash would. Returns the exit status (-9)."""
        if self.process is None:
            return None
        self._signal_group(signal.SIGKILL)
        self.process.wait()
        return self.process.returncode

    def pause(self) -> None:
        """SIGSTOP to the process group: the worker stops dead, as in a long GC pause or a frozen VM."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: a paused worker wakes up with its state as it was."""
        self._signal_group(signal.SIGCONT)

    def log_text(self) -> str:
        return _read(self.log_path)

    def wait_for_log(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """Wait until the log matches the regular expression `pattern`."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log_text())
            if match:
                return match
            self._check_alive(f"while waiting for {pattern!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {pattern!r} in the log within {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.1)

    def wait_http(self, path: str = "/metrics", timeout: float = 60.0) -> bytes:
        """Wait until `GET http://127.0.0.1:WEB_PORT{path}` answers 200; return the body."""
        url = f"http://127.0.0.1:{self.web_port}{path}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local test URL
                    if response.status == 200:
                        return response.read()
            except (urllib.error.URLError, OSError):
                pass
            self._check_alive(f"while waiting for {url}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {url} did not answer within {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.2)

    def _check_alive(self, doing: str) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with status {self.process.returncode} {doing}:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def process_gone(pid: int) -> bool:
    """True when no process (not even a zombie of ours) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie still answers kill(0); it is dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state == "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
