"""JetStream under faults, with real processes: a worker SIGKILLed mid-flood, and a private
``nats-server -js`` killed and restarted in the middle of a publish flood and of a consume.

The worker test uses the machine's NATS (127.0.0.1:4222, or MEDIATOR_TEST_NATS) with a
stream prefix of its own; the restart tests start their own ``nats-server`` on a free
port with a store directory of their own, never touching the shared one. Both fail (not
skip) when NATS or the ``nats-server`` binary is missing.
"""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

import pytest

from mediator.event import LocalEventBus
from mediator.transport import Worker, connect
from mediator.transport.jetstream import JetStreamTransport

from mediator.codec import event_type

HERE = Path(__file__).resolve().parent
WORKER = HERE / "jetstream_worker.py"
NATS_URL = os.environ.get("MEDIATOR_TEST_NATS", "nats://127.0.0.1:4222")


@event_type("faults.Job")  # the worker process (jetstream_worker.py) has its twin
@dataclass(frozen=True)
class Job:
    n: int


def new_prefix() -> str:
    return "mtf" + uuid.uuid4().hex[:12]


def run_async(coroutine: Any, timeout: float = 120) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or next(
        (path for path in ("/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server") if os.path.exists(path)),
        None,
    )
    if found is None:
        pytest.fail("nats-server is not installed (apt-get install nats-server): the JetStream fault tests need it")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """A private ``nats-server -js`` on a free port, with its own store directory."""

    def __init__(self, store: Path) -> None:
        self.binary = nats_server_binary()
        self.port = free_port()
        self.store = store
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: Optional["subprocess.Popen[bytes]"] = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server did not start on port {self.port}")
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the server dies without a chance to flush or say goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def nats_server(tmp_path: Path) -> Any:
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def lines(path: Path) -> List[int]:
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split()]


def start_worker(url: str, group: str, out: Path, concurrency: int) -> "subprocess.Popen[str]":
    process = subprocess.Popen(
        [sys.executable, str(WORKER), url, group, str(out), str(concurrency)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")])},
    )
    assert process.stdout is not None
    ready = process.stdout.readline()  # once the worker's group exists
    assert ready.strip() == "ready", f"the worker did not start (exit code {process.poll()})"
    return process


def test_a_worker_killed_mid_flood_loses_nothing_and_duplicates_at_most_twice_its_concurrency(tmp_path: Path) -> None:
    total, concurrency = 10_000, 16
    url = f"{NATS_URL}?prefix={new_prefix()}"
    first_out, second_out = tmp_path / "first", tmp_path / "second"
    first = start_worker(url, "g", first_out, concurrency)
    second = None
    try:

        async def flood() -> None:
            async with connect(url) as transport:

                async def publish_all() -> None:
                    for start in range(0, total, 200):
                        await asyncio.gather(*(transport.publish(Job(n)) for n in range(start, start + 200)))

                # the kill lands while the flood is still being published and consumed,
                # however fast or slow this machine is
                publishing = asyncio.ensure_future(publish_all())
                try:
                    await wait_until(lambda: len(lines(first_out)) >= 1_500, 60, "the first worker to be mid-flood")
                    first.send_signal(signal.SIGKILL)
                    first.wait()
                finally:
                    await publishing

        run_async(flood())
        handled_by_first = lines(first_out)
        assert len(set(handled_by_first)) < total, "the first worker finished before it was killed"

        second = start_worker(url, "g", second_out, concurrency)
        run_async(
            wait_until(lambda: len(set(lines(first_out) + lines(second_out))) >= total, 90, "every job to be handled")
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
        handled = handled_by_first + lines(second_out)
        assert set(handled) == set(range(total))  # at least once
        duplicates = len(handled) - total
        assert duplicates <= 2 * concurrency, f"{duplicates} duplicates, more than twice the concurrency"
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        run_async(destroy(url))


async def destroy(url: str) -> None:
    async with JetStreamTransport(url, reconnect_timeout=5) as transport:
        await transport.destroy()


def test_a_server_restart_mid_publish_and_mid_consume_loses_no_acknowledged_publish(nats_server: NatsServer) -> None:
    total = 3_000
    handled: List[int] = []
    bus = LocalEventBus()

    @bus.register
    async def on_job(event: Job) -> None:
        await asyncio.sleep(0.004)  # slower than the flood: a backlog is left to consume
        handled.append(event.n)

    async def main() -> None:
        acknowledged: List[int] = []
        # request_timeout below the outage: publishes in flight time out and are sent again
        # (same Nats-Msg-Id), while their first copy may still reach the new server.
        transport = JetStreamTransport(nats_server.url, prefix=new_prefix(), reconnect_timeout=30, request_timeout=0.5)
        async with transport:
            worker = Worker(transport, bus, group="g", concurrency=4, claim_idle=2.0, poll=0.2, handle_signals=False)
            async with worker:
                running = asyncio.ensure_future(worker.run())

                async def flood(numbers: range, many: bool) -> None:
                    for start in range(numbers.start, numbers.stop, 25):
                        batch = range(start, start + 25)
                        if many:
                            await transport.publish_many([Job(n) for n in batch])
                        else:
                            await asyncio.gather(*(transport.publish(Job(n)) for n in batch))
                        acknowledged.extend(batch)  # every publish of the batch returned: PubAck'd

                # Single publishes and batches side by side: the restart hits both.
                half = total // 2
                publishing = asyncio.gather(flood(range(0, half), False), flood(range(half, total), True))
                await wait_until(lambda: len(acknowledged) >= total // 3, 30, "a third of the flood")
                nats_server.kill()
                await asyncio.sleep(1.0)
                nats_server.start()
                await publishing
                assert len(acknowledged) == total
                stored = await transport._js.stream_info(transport.stream)
                assert stored.state.messages == total  # deduplicated: no publish stored twice

                await wait_until(lambda: len(set(handled)) >= total // 2, 60, "half of the jobs consumed")
                assert len(set(handled)) < total, "consumed everything before the second restart"
                nats_server.kill()
                await asyncio.sleep(0.3)
                nats_server.start()

                await wait_until(lambda: set(handled) >= set(acknowledged), 60, "every acknowledged job to be handled")
                await worker.aclose(5)
                await running

    run_async(main(), timeout=150)
    assert set(handled) == set(range(total))
