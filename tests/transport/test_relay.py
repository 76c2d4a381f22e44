"""Guarantee 8, the outbox reaches the broker (``Relay``), and the store inbox (guarantee 7)."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List

from mediator.codec import event_type
from mediator.event import LocalEventBus
from mediator.eventsourcing import open_store
from mediator.transport import Relay, Worker
from mediator.transport.inbox import StoreInbox


@event_type("relay.Note")
@dataclass(frozen=True)
class Note:
    n: int


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def worker_for(transport: Any, bus: Any, **options: Any) -> Worker:
    return Worker(transport, bus, handle_signals=False, poll=0.2, backoff=0.02, **options)


def test_relay_publishes_the_log_from_its_checkpoint_then_follows_it(backend: Any, run: Any) -> None:
    seen: List[Any] = []
    bus = LocalEventBus()

    @bus.register
    async def on_note(event: Note, headers: Dict[str, str], message_id: str) -> None:
        seen.append((event.n, headers, message_id))

    async def main() -> None:
        async with open_store("memory://") as store, backend.connect() as transport:
            await store.append("a", [Note(1), Note(2)], expected_version=0, metadata={"user": "ann"})
            await store.append("b", [Note(3)], expected_version=0)
            recorded = [record async for record in store.read_all()]
            worker = worker_for(transport, bus, group="g", start="earliest")
            await worker.open()
            task = asyncio.ensure_future(worker.run())
            relay = Relay(store, transport, name="out", batch_size=2)
            assert await relay.catch_up() == 3
            assert await relay.catch_up() == 0  # checkpointed
            assert await store.checkpoint("relay:out") == recorded[-1].position
            following = asyncio.ensure_future(relay.run())
            await store.append("b", [Note(4)], expected_version=1)
            await wait_until(lambda: len(seen) == 4)
            await relay.aclose()
            await following
            await worker.aclose(5)
            await task
        by_n = {n: (headers, message_id) for n, headers, message_id in seen}
        assert sorted(by_n) == [1, 2, 3, 4]
        first = recorded[0]
        headers, message_id = by_n[1]
        assert message_id == first.id
        assert headers["stream"] == "a" and headers["version"] == "1" and headers["position"] == str(first.position)
        assert headers["metadata"] == '{"user":"ann"}'

    run(main())


def test_a_relay_killed_between_publish_and_checkpoint_duplicates_and_never_skips(
    redis_url: str, tmp_path: Any, run: Any
) -> None:
    import redis

    store_url = f"sqlite:///{tmp_path / 'outbox.db'}"
    marker = str(tmp_path / "marker")

    async def fill() -> List[str]:
        async with open_store(store_url) as store:
            for start in range(0, 1_000, 100):
                await store.append(f"s{start}", [Note(n) for n in range(start, start + 100)], expected_version=0)
            return [record.id async for record in store.read_all()]

    ids = run(fill())
    here = os.path.dirname(os.path.abspath(__file__))
    process = subprocess.Popen(
        [sys.executable, os.path.join(here, "relay_proc.py"), store_url, redis_url, "out", marker],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(marker):
            assert process.poll() is None, process.stdout.read() if process.stdout else b""
            assert time.monotonic() < deadline, "the relay never reached its first checkpoint"
            time.sleep(0.05)
        prefix = redis_url.rsplit("prefix=", 1)[1]
        client = redis.Redis.from_url(redis_url.split("?")[0])
        stream = f"{prefix}:s:relay.Note"
        assert client.xlen(stream) == 100, "the first batch is published before its checkpoint"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    async def restart() -> int:
        from mediator.transport import connect

        async with open_store(store_url) as store, connect(redis_url) as transport:
            return await Relay(store, transport, name="out", batch_size=100).catch_up()

    assert run(restart()) == 1_000  # from the start: the checkpoint was never written
    try:
        published = [fields[b"i"].decode() for _, fields in client.xrange(stream)]
    finally:
        client.close()
    assert set(published) == set(ids)  # never a gap
    assert len(published) == 1_100  # the killed batch, twice
    assert published[100:] == ids


def test_store_inbox_commits_effects_and_inbox_row_together(backend: Any, run: Any, tmp_path: Any) -> None:
    calls = {"count": 0, "flaky": 0}
    bus = LocalEventBus()

    @bus.register
    async def count(event: Note, transaction: Any) -> None:
        calls["count"] += 1
        total = await transaction.get("notes", "total", 0)
        await transaction.put("notes", "total", total + event.n)

    @bus.register
    async def flaky(event: Note) -> None:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("once")

    async def main() -> None:
        async with open_store(f"sqlite:///{tmp_path / 'inbox.db'}") as store, backend.connect() as transport:
            worker = worker_for(transport, bus, group="g", inbox=StoreInbox(store), claim_idle=5.0)
            await worker.open()
            task = asyncio.ensure_future(worker.run())
            await transport.publish(Note(5), message_id="note-1")
            await wait_until(lambda: calls["flaky"] == 2)
            await transport.publish(Note(5), message_id="note-1")  # a duplicate
            await transport.publish(Note(7), message_id="note-2")
            await wait_until(lambda: calls["flaky"] == 3)
            await asyncio.sleep(0.3)
            await worker.aclose(5)
            await task
            async with store.transaction() as tx:
                total = await tx.get("notes", "total")
                inbox = dict(await tx.items("mediator.inbox"))
        # note-1's first delivery failed in flaky: its write was rolled back with it, and
        # count ran again on the redelivery; the duplicate ran nothing.
        assert calls == {"count": 3, "flaky": 3}
        assert total == 12
        assert set(inbox) == {"g:note-1", "g:note-2"}

    run(main())
