"""The transport contract suite runs on every backend in ``BACKENDS``.

Each test gets its own namespace (a fresh memory broker, Redis key prefix, JetStream
stream prefix), so runs never see each other. A backend whose broker is not running
fails its tests: it does not skip them.

To add a backend: an entry ``name: (url_for(prefix), cleanup(url, prefix))`` below.
"""

import asyncio
import os
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

REDIS_URL = os.environ.get("MEDIATOR_TEST_REDIS", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("MEDIATOR_TEST_NATS", "nats://127.0.0.1:4222")


def _redis_cleanup(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


def _no_cleanup(url: str, prefix: str) -> None:
    pass


#: name -> (URL for a namespace prefix, cleanup(url, prefix) after the test)
BACKENDS: Dict[str, Tuple[Callable[[str], str], Callable[[str, str], None]]] = {
    "memory": (lambda prefix: f"memory://{prefix}", _no_cleanup),
    "redis": (lambda prefix: f"{REDIS_URL}?prefix={prefix}", _redis_cleanup),
}


class Backend:
    """One backend for one test: ``url`` (with the test's own prefix) and ``connect()``."""

    def __init__(self, name: str, prefix: str) -> None:
        self.name = name
        self.prefix = prefix
        self.url = BACKENDS[name][0](prefix)

    def connect(self, **options: Any) -> Any:
        from mediator.transport import connect

        return connect(self.url, **options)

    def cleanup(self) -> None:
        BACKENDS[self.name][1](self.url, self.prefix)

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.url}>"


def new_prefix() -> str:
    return "mt" + uuid.uuid4().hex[:12]


@pytest.fixture(params=list(BACKENDS))
def backend(request: Any) -> Any:
    backend = Backend(request.param, new_prefix())
    try:
        yield backend
    finally:
        backend.cleanup()


def run_async(coroutine: Any, timeout: Optional[float] = 60) -> Any:
    """Run a test's coroutine in a fresh event loop, failing it after ``timeout`` seconds."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


@pytest.fixture
def run() -> Callable[..., Any]:
    """``run(coroutine, timeout=60)``: the test's body in a fresh event loop."""
    return run_async


# -- real processes ------------------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private ``redis-server`` on a free port, persisting every write (AOF, fsync always)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Any = None

    def start(self) -> None:
        import shutil
        import subprocess
        import time

        import redis

        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError(f"redis-server on port {self.port} did not start")
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        import signal

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except Exception:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def redis_server(tmp_path: Any) -> Any:
    """A private redis-server (persistence on) for tests that restart the broker."""
    server = RedisServer(str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Workers:
    """Starts ``python -m mediator.worker proc_app:bus`` processes; stops them at the end."""

    def __init__(self, log: str) -> None:
        self.log = log
        self.processes: List[Any] = []

    def start(self, url: str, group: str, *args: str, env: Optional[Dict[str, str]] = None) -> Any:
        import subprocess
        import sys

        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [HERE, ROOT] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else [])
        )
        environment["PROC_LOG"] = self.log
        environment.update(env or {})
        process = subprocess.Popen(
            [sys.executable, "-m", "mediator.worker", "proc_app:bus", "--url", url, "--group", group,
             "--log-level", "WARNING", *args],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def command(self) -> List[str]:
        import sys

        return [sys.executable, "-m", "mediator.worker"]

    def env(self) -> Dict[str, str]:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join([HERE, ROOT])
        environment["PROC_LOG"] = self.log
        return environment

    def lines(self) -> List[str]:
        try:
            with open(self.log) as file:
                return file.read().splitlines()
        except FileNotFoundError:
            return []

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()


@pytest.fixture
def workers(tmp_path: Any) -> Any:
    started = Workers(str(tmp_path / "handled.log"))
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def redis_url() -> Any:
    """The shared Redis with a key prefix of this test's own (deleted afterwards)."""
    prefix = new_prefix()
    try:
        yield f"{REDIS_URL}?prefix={prefix}"
    finally:
        _redis_cleanup(REDIS_URL, prefix)
