"""The Redis transport's guarantees with real worker processes, signals and broker restarts.

Workers run ``python -m mediator.worker proc_app:bus`` (see proc_app.py); each handled
event is a line in a log file, so the tests count handlings across processes.
"""

import asyncio
import collections
import signal
import subprocess
import threading
import time
import uuid
from typing import Any, Callable, List

import pytest

from mediator.transport import connect

def ticks(lines: List[str]) -> "collections.Counter[int]":
    return collections.Counter(int(line.split()[1]) for line in lines if line.startswith("tick "))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, processes: Any = ()) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for process in processes:
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                raise AssertionError(f"a worker exited ({process.returncode}) while waiting for {what}:\n{output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


async def publish_ticks(url: str, numbers: range, chunk: int = 500, **options: Any) -> List[str]:
    async with connect(url, **options) as transport:
        ids: List[str] = []
        for start in range(numbers.start, numbers.stop, chunk):
            batch = range(start, min(start + chunk, numbers.stop))
            ids += await asyncio.gather(
                *(transport.publish_encoded("proc.Tick", b'{"n": %d}' % n) for n in batch)
            )
        return ids


def prefixed(url: str) -> str:
    return f"{url}?prefix=mt{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["redis", "nats"])
def url(request: Any) -> str:
    """The broker-agnostic process tests run on Redis and on JetStream."""
    return request.getfixturevalue(f"{request.param}_url")


def test_sigkill_mid_flood_then_another_worker_handles_every_event(url: str, workers: Any) -> None:
    concurrency = 64
    first = workers.start(
        url, "flood", "--concurrency", str(concurrency), "--start", "earliest", "--claim-idle", "1",
        env={"PROC_DELAY": "0.01"},  # at most 6,400 events/s: the kill lands mid-flood on any machine
    )
    # The flood is published from a thread while the worker consumes it: the kill lands as soon
    # as 2,000 are handled, however fast or slow this machine publishes.
    flood = threading.Thread(target=lambda: asyncio.run(publish_ticks(url, range(10_000))))
    flood.start()
    try:
        wait_for(lambda: sum(ticks(workers.lines()).values()) >= 2_000, 60, "2,000 events handled", [first])
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        flood.join(120)
    assert not flood.is_alive(), "the flood was not published within 120s"
    killed_at = sum(ticks(workers.lines()).values())
    assert killed_at < 10_000, "the worker must be killed in the middle of the flood"

    second = workers.start(url, "flood", "--concurrency", str(concurrency), "--claim-idle", "1")
    wait_for(lambda: len(ticks(workers.lines())) == 10_000, 60, "every event handled", [second])
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    handled = ticks(workers.lines())
    assert set(handled) == set(range(10_000))
    duplicates = sum(handled.values()) - 10_000
    print("killed at", killed_at, "duplicates", duplicates)
    assert duplicates <= 2 * concurrency, (duplicates, killed_at)


def test_sigterm_finishes_in_flight_messages_and_exits_0(url: str, workers: Any) -> None:
    async def publish() -> None:
        async with connect(url) as transport:
            for n in range(40):
                await transport.publish_encoded("proc.Slow", b'{"n": %d, "seconds": 0.5}' % n)

    worker = workers.start(url, "graceful", "--concurrency", "8", "--start", "earliest", "--claim-idle", "30")
    asyncio.run(publish())
    wait_for(lambda: any(line.startswith("end ") for line in workers.lines()), 30, "a first message done", [worker])
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    lines = workers.lines()
    started = {line.split()[1] for line in lines if line.startswith("start ")}
    ended = {line.split()[1] for line in lines if line.startswith("end ")}
    assert started == ended, "every message in flight at SIGTERM finished"
    assert len(ended) < 40

    # They were acknowledged; the rest were left to others at once (claim_idle is 30s).
    other = workers.start(url, "graceful", "--concurrency", "40", "--claim-idle", "30")
    wait_for(lambda: sum(1 for line in workers.lines() if line.startswith("end ")) >= 40, 30, "the rest", [other])
    time.sleep(0.5)
    other.send_signal(signal.SIGINT)
    assert other.wait(30) == 0
    done = collections.Counter(line.split()[1] for line in workers.lines() if line.startswith("end "))
    assert sorted(int(n) for n in done) == list(range(40))
    assert set(done.values()) == {1}, "none handled twice, none lost"


def test_a_long_handler_in_one_process_is_not_run_again_by_another(url: str, workers: Any) -> None:
    async def publish() -> None:
        async with connect(url) as transport:
            await transport.publish_encoded("proc.Slow", b'{"n": 1, "seconds": 4}')

    a = workers.start(url, "long", "--start", "earliest", "--claim-idle", "1")
    b = workers.start(url, "long", "--start", "earliest", "--claim-idle", "1")
    asyncio.run(publish())
    wait_for(lambda: "end 1" in workers.lines(), 30, "the long handler", [a, b])
    time.sleep(1.5)  # past another claim_idle
    for process in (a, b):
        process.send_signal(signal.SIGTERM)
    assert a.wait(30) == 0 and b.wait(30) == 0
    assert workers.lines() == ["start 1", "end 1"]


def test_a_message_that_kills_its_workers_is_dead_lettered_after_max_deliveries(url: str, workers: Any) -> None:
    async def publish() -> None:
        async with connect(url) as transport:
            await transport.publish_encoded("proc.Crash", b'{"n": 1}')
            await transport.publish_encoded("proc.Tick", b'{"n": 2}')

    asyncio.run(publish())
    options = ("--start", "earliest", "--claim-idle", "0.5", "--max-deliveries", "2", "--concurrency", "1")
    for attempt in (1, 2):
        process = workers.start(url, "poison", *options)
        assert process.wait(30) == 3, f"delivery {attempt} kills the worker"
    survivor = workers.start(url, "poison", *options)

    async def letters() -> List[Any]:
        async with connect(url) as transport:
            return [letter async for letter in transport.dead_letters("poison")]

    wait_for(lambda: bool(asyncio.run(letters())), 30, "the dead letter", [survivor])
    wait_for(lambda: "tick 2" in workers.lines(), 30, "the next message", [survivor])
    (letter,) = asyncio.run(letters())
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(30) == 0
    assert workers.lines().count("crash 1") == 2
    assert (letter.type, letter.deliveries, letter.handler) == ("proc.Crash", 3, None)
    assert letter.error.startswith("abandoned: delivered 3 times and never settled")


def test_streams_are_trimmed(redis_url: str) -> None:
    import redis

    url = redis_url

    asyncio.run(publish_ticks(url, range(5_000), maxlen=1_000))
    prefix = url.rsplit("prefix=", 1)[1]
    client = redis.Redis.from_url(url.split("?")[0])
    try:
        length = client.xlen(f"{prefix}:s:proc.Tick")
    finally:
        client.close()
    assert 1_000 <= length < 2_000  # MAXLEN ~: whole nodes of entries are dropped


def test_broker_restart_mid_publish_and_mid_consume(redis_server: Any, workers: Any) -> None:
    url = prefixed(redis_server.url)
    worker = workers.start(url, "restart", "--concurrency", "32", "--start", "earliest", "--claim-idle", "2")
    acknowledged: List[str] = []

    async def flood() -> None:
        async with connect(url) as transport:

            async def one(n: int) -> None:
                await transport.publish_encoded("proc.Tick", b'{"n": %d}' % n)
                acknowledged.append(str(n))

            for start in range(0, 3_000, 100):
                await asyncio.gather(*(one(n) for n in range(start, start + 100)))
                if start == 1_000:
                    redis_server.kill()  # mid flood: the next publishes wait for it
                    asyncio.get_running_loop().call_later(1.0, redis_server.start)
                await asyncio.sleep(0.01)

    asyncio.run(flood())
    assert len(acknowledged) == 3_000
    wait_for(lambda: len(ticks(workers.lines())) >= 1_500, 60, "consumption under way", [worker])
    redis_server.kill()  # mid consume
    time.sleep(0.5)
    redis_server.start()
    wait_for(lambda: len(ticks(workers.lines())) == 3_000, 90, "every acknowledged publish handled", [worker])
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert set(ticks(workers.lines())) == set(range(3_000))


def test_cli_rejects_a_bad_bus_reference(url: str, workers: Any) -> None:
    process = subprocess.run(
        [*workers.command(), "proc_app:nothing", "--url", url, "--group", "g"],
        env=workers.env(),
        capture_output=True,
        timeout=60,
    )
    assert process.returncode == 2
    assert b"has no attribute 'nothing'" in process.stderr
