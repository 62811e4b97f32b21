"""Fixtures and helpers for the Postroom Python interop suite.

How the suite reaches a broker (the contract; see README.md):

* ``AMQP_URL`` set: every test talks to that external broker (this is how the suite is
  validated against RabbitMQ). ``fresh_broker`` then hands out the same external broker, and
  ``restart(broker)`` runs ``AMQP_RESTART_CMD`` (or skips the test when it is unset).
* otherwise ``POSTROOM_BIN`` names the ``postroom`` binary. A session-scoped broker is started as
  ``$POSTROOM_BIN serve --amqp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir DIR`` and
  is ready once it prints ``postroom ready amqp=HOST:PORT http=HOST:PORT`` on stdout (30 s at
  most). Its stderr goes to ``stderr.log`` next to DIR. At the end it gets SIGTERM, then SIGKILL
  after 10 s. ``fresh_broker`` starts a separate broker per test the same way.

Tests import the plain helpers from here (``from conftest import ...``); pytest puts this
directory on ``sys.path`` because it has no ``__init__.py``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import pika
import pika.exceptions
import pytest

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Every test phase (setup, call, teardown) is bounded so a hung broker fails a test, not the run.
TEST_TIMEOUT = float(os.environ.get("POSTROOM_TEST_TIMEOUT", "60"))
READY_LINE = re.compile(r"^postroom ready amqp=(?P<amqp>\S+) http=(?P<http>\S+)\s*$")

Delivery = Tuple[pika.spec.Basic.Deliver, pika.spec.BasicProperties, bytes]


# --------------------------------------------------------------------------------------------
# Brokers
# --------------------------------------------------------------------------------------------


class BrokerStartError(RuntimeError):
    """The broker exited or did not print its ready line in time."""


class PostroomBroker:
    """A ``postroom serve`` process on loopback ports chosen by the OS.

    ``start()`` may be called again after ``stop()``; it reuses the same data directory, and the
    ports may change (``amqp_url`` always reflects the current run).
    """

    external = False

    def __init__(self, binary: str, base_dir: Path) -> None:
        self.binary = binary
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.stderr_path = self.base_dir / "stderr.log"
        self.stdout_path = self.base_dir / "stdout.log"
        self.process: Optional[subprocess.Popen] = None
        self.amqp_address: Optional[str] = None
        self.http_address: Optional[str] = None
        self._reader: Optional[threading.Thread] = None
        self._runs = 0

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@{self.amqp_address}/%2F"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    def command(self) -> List[str]:
        return [
            self.binary,
            "serve",
            "--amqp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            str(self.data_dir),
        ]

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "broker already running"
        self._runs += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "ab") as log:
            log.write(f"===== postroom start #{self._runs} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._reader = threading.Thread(
            target=_pump_stdout, args=(self.process.stdout, self.stdout_path, lines), daemon=True
        )
        self._reader.start()

        deadline = time.monotonic() + READY_TIMEOUT
        seen: List[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill()
                raise BrokerStartError(self._failure("did not print its ready line within 30 s", seen))
            try:
                line = lines.get(timeout=min(0.2, remaining))
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the process is exiting
                try:
                    self.process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self._kill()
                raise BrokerStartError(
                    self._failure(f"exited with status {self.process.returncode}", seen)
                )
            seen.append(line)
            match = READY_LINE.match(line)
            if match:
                self.amqp_address = match.group("amqp")
                self.http_address = match.group("http")
                return

    def stop(self) -> None:
        """SIGTERM, wait up to 10 s, then SIGKILL."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill()
        if self._reader is not None:
            self._reader.join(timeout=2)

    def restart(self) -> None:
        self.stop()
        self.start()

    def crash_restart(self) -> None:
        """SIGKILL (nothing flushed, no shutdown) and start again on the same data directory."""
        self._kill()
        if self._reader is not None:
            self._reader.join(timeout=2)
        self.start()

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)

    def _failure(self, what: str, stdout_lines: List[str]) -> str:
        return (
            f"postroom {what}\n"
            f"command: {' '.join(self.command())}\n"
            f"--- stdout ---\n{''.join(line + chr(10) for line in stdout_lines)}"
            f"--- stderr ({self.stderr_path}) ---\n{self.stderr_text()[-20000:]}"
        )


def _pump_stdout(stream, copy_path: Path, lines: "queue.Queue[Optional[str]]") -> None:
    """Forward stdout lines to ``lines`` (then ``None`` at EOF) and keep a copy on disk.

    It keeps reading after the ready line so the broker never blocks on a full pipe.
    """
    with open(copy_path, "ab") as copy:
        for raw in iter(stream.readline, b""):
            copy.write(raw)
            copy.flush()
            lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
    stream.close()
    lines.put(None)


class ExternalBroker:
    """A broker we did not start (``AMQP_URL``), e.g. RabbitMQ for validating the suite."""

    external = True
    http_url = None

    def __init__(self, url: str) -> None:
        self.amqp_url = url

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def restart(self) -> None:
        command = os.environ.get("AMQP_RESTART_CMD")
        if not command:
            pytest.skip("restarting an external broker needs AMQP_RESTART_CMD")
        subprocess.run(command, shell=True, check=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                connect(self.amqp_url).close()
                return
            except pika.exceptions.AMQPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def restart(broker) -> None:
    """SIGTERM the broker and start it again on the same data directory (port may change)."""
    broker.restart()


def crash_restart(broker) -> None:
    """kill -9 the broker and start it again on the same data directory (port may change)."""
    if getattr(broker, "external", False):
        pytest.skip("kill -9 needs a broker this suite started")
    broker.crash_restart()


def _postroom_binary() -> str:
    binary = os.environ.get("POSTROOM_BIN")
    if not binary:
        pytest.exit("set AMQP_URL (external broker) or POSTROOM_BIN (postroom binary)", returncode=4)
    if os.path.sep in binary:
        if not os.access(binary, os.X_OK):
            pytest.exit(f"POSTROOM_BIN={binary} is not an executable file", returncode=4)
        return os.path.abspath(binary)
    found = shutil.which(binary)
    if not found:
        pytest.exit(f"POSTROOM_BIN={binary} not found on PATH", returncode=4)
    return found


def _start_postroom(base_dir: Path) -> PostroomBroker:
    broker = PostroomBroker(_postroom_binary(), base_dir)
    failure = None
    try:
        broker.start()
    except BrokerStartError as error:
        failure = str(error)
    if failure is not None:  # outside the except block, so pytest shows only our message
        pytest.fail(failure, pytrace=False)
    return broker


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Iterator[object]:
    """The broker shared by the whole session."""
    url = os.environ.get("AMQP_URL")
    if url:
        yield ExternalBroker(url)
        return
    started = _start_postroom(tmp_path_factory.mktemp("postroom"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def fresh_broker(tmp_path) -> Iterator[object]:
    """A broker of this test's own, safe to restart. With AMQP_URL it is the external broker."""
    url = os.environ.get("AMQP_URL")
    if url:
        yield ExternalBroker(url)
        return
    started = _start_postroom(tmp_path)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def amqp_url(broker) -> str:
    return broker.amqp_url


@pytest.fixture
def connection(amqp_url) -> Iterator[pika.BlockingConnection]:
    conn = connect(amqp_url)
    try:
        yield conn
    finally:
        close_quietly(conn)


@pytest.fixture
def channel(connection) -> pika.adapters.blocking_connection.BlockingChannel:
    return connection.channel()


@pytest.fixture
def open_connection(amqp_url) -> Iterator[Callable[..., pika.BlockingConnection]]:
    """Factory for extra connections to the session broker, all closed at teardown."""
    opened: List[pika.BlockingConnection] = []

    def factory(**overrides) -> pika.BlockingConnection:
        conn = connect(amqp_url, **overrides)
        opened.append(conn)
        return conn

    try:
        yield factory
    finally:
        for conn in opened:
            close_quietly(conn)


@pytest.fixture(name="unique_name")
def unique_name_fixture(amqp_url) -> Iterator[Callable[[str], str]]:
    """``unique_name(prefix)``; queues and exchanges so named are deleted at teardown."""
    names: List[str] = []

    def factory(prefix: str = "test") -> str:
        name = unique_name(prefix)
        names.append(name)
        return name

    yield factory
    if names:
        _delete_everything_named(amqp_url, names)


def unique_name(prefix: str = "test") -> str:
    """A queue/exchange name no other test (or earlier run) uses."""
    return f"postroom-test.{prefix}.{uuid.uuid4().hex[:12]}"


def _delete_everything_named(url: str, names: List[str]) -> None:
    try:
        conn = connect(url)
    except pika.exceptions.AMQPError:
        return
    try:
        ch = conn.channel()
        for name in names:
            for delete in ("queue_delete", "exchange_delete"):
                try:
                    if not ch.is_open:
                        ch = conn.channel()
                    getattr(ch, delete)(name)
                except pika.exceptions.AMQPError:
                    pass
    except pika.exceptions.AMQPError:
        pass
    finally:
        close_quietly(conn)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def connect(url: str, **overrides) -> pika.BlockingConnection:
    """A BlockingConnection with bounded socket/handshake timeouts; overrides set parameters."""
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.stack_timeout = 15
    params.blocked_connection_timeout = 30
    for key, value in overrides.items():
        setattr(params, key, value)
    return pika.BlockingConnection(params)


def close_quietly(conn: pika.BlockingConnection) -> None:
    try:
        if conn.is_open:
            conn.close()
    except Exception:  # noqa: BLE001 - teardown of a connection the test may have broken
        pass


@contextlib.contextmanager
def channel_closed_with(reply_code: int):
    """Expect the broker to close the channel with ``reply_code`` inside the block."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        yield info
    assert info.value.reply_code == reply_code, f"expected {reply_code}, got {info.value!r}"


def pump(connection: pika.BlockingConnection, done: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Process I/O until ``done()`` or ``timeout`` seconds; returns ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return done()
        connection.process_data_events(time_limit=min(0.05, remaining))
    return True


def idle(connection: pika.BlockingConnection, seconds: float) -> None:
    """Process I/O for ``seconds`` (to observe that nothing more arrives)."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        connection.process_data_events(time_limit=min(0.05, remaining))


def consume(channel, queue_name: str, count: int, timeout: float = 5.0,
            auto_ack: bool = True) -> List[Delivery]:
    """Consume up to ``count`` messages (fewer if ``timeout`` passes), then cancel the consumer."""
    received: List[Delivery] = []
    deadline = time.monotonic() + timeout
    if count > 0:
        for method, properties, body in channel.consume(
            queue_name, auto_ack=auto_ack, inactivity_timeout=0.1
        ):
            if method is not None:
                received.append((method, properties, body))
            if len(received) >= count or time.monotonic() >= deadline:
                break
    channel.cancel()
    return received


def publish(channel, routing_key: str, body: bytes = b"x", exchange: str = "", **properties) -> None:
    channel.basic_publish(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        properties=pika.BasicProperties(**properties) if properties else None,
    )


def publish_confirmed(connection: pika.BlockingConnection, routing_key: str, bodies,
                      exchange: str = "", **properties) -> None:
    """Publish ``bodies`` on a throwaway confirm-mode channel; returns once all are enqueued.

    RabbitMQ answers queue.declare(passive) and purge ahead of deliveries still in flight from
    the same channel, so tests that count right after publishing publish this way.
    """
    ch = connection.channel()
    ch.confirm_delivery()
    props = pika.BasicProperties(**properties) if properties else None
    for body in bodies:
        ch.basic_publish(exchange=exchange, routing_key=routing_key, body=body, properties=props)
    ch.close()


def message_count(channel, queue_name: str) -> int:
    return channel.queue_declare(queue_name, passive=True).method.message_count


def wait_for_message_count(channel, queue_name: str, expected: int, timeout: float = 5.0) -> int:
    """Poll a passive declare until the ready count is ``expected``; returns the last count.

    Needed when the count is read on a different channel than the one that changed it: AMQP
    orders operations per channel only.
    """
    deadline = time.monotonic() + timeout
    while True:
        count = message_count(channel, queue_name)
        if count == expected or time.monotonic() >= deadline:
            return count
        time.sleep(0.05)


def get_body(channel, queue_name: str) -> Optional[bytes]:
    method, _properties, body = channel.basic_get(queue_name, auto_ack=True)
    return None if method is None else body


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------


class PhaseTimeout(Exception):
    """A test phase exceeded POSTROOM_TEST_TIMEOUT (the broker is probably hung)."""


@contextlib.contextmanager
def _time_limit(seconds: float, what: str):
    def expired(_signum, _frame):
        raise PhaseTimeout(f"{what} took longer than {seconds:g} s (POSTROOM_TEST_TIMEOUT)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    # Setup may start a broker, which alone may take READY_TIMEOUT.
    with _time_limit(TEST_TIMEOUT + READY_TIMEOUT, f"setup of {item.nodeid}"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _time_limit(TEST_TIMEOUT, item.nodeid):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    with _time_limit(TEST_TIMEOUT, f"teardown of {item.nodeid}"):
        return (yield)


def pytest_report_header(config):
    if os.environ.get("AMQP_URL"):
        return f"broker: external AMQP_URL={os.environ['AMQP_URL']}"
    return f"broker: POSTROOM_BIN={os.environ.get('POSTROOM_BIN', '(unset)')}"
