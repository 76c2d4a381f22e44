"""The transport contract suite runs on every backend in ``BACKENDS``.

Each test gets its own namespace (a fresh memory broker, Redis key prefix, JetStream
stream prefix), so runs never see each other. A backend whose broker is not running
fails its tests: it does not skip them.

To add a backend: an entry ``name: (url_for(prefix), cleanup(url, prefix))`` below.
"""

import asyncio
import os
import uuid
from typing import Any, Callable, Dict, Optional, Tuple

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


def _nats_cleanup(url: str, prefix: str) -> None:
    from mediator.transport.jetstream import JetStreamTransport

    async def destroy() -> None:
        transport = JetStreamTransport(url, reconnect_timeout=5)
        async with transport:
            await transport.destroy()

    asyncio.run(destroy())


def _no_cleanup(url: str, prefix: str) -> None:
    pass


#: name -> (URL for a namespace prefix, cleanup(url, prefix) after the test)
BACKENDS: Dict[str, Tuple[Callable[[str], str], Callable[[str, str], None]]] = {
    "memory": (lambda prefix: f"memory://{prefix}", _no_cleanup),
    "redis": (lambda prefix: f"{REDIS_URL}?prefix={prefix}", _redis_cleanup),
    "nats": (lambda prefix: f"{NATS_URL}?prefix={prefix}", _nats_cleanup),
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
