"""The store's public API on every backend: append, read, read_all, version, subscribe,
transactions, and optimistic concurrency (guarantee 1) with tasks."""

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest

from mediator.codec import EncodeError, UnknownTypeError, event_type
from mediator.eventsourcing import (
    ConcurrencyError,
    EventStore,
    EventStoreError,
    RecordedEvent,
    StoreClosedError,
    open_store,
)


@event_type("es_test.store.Deposited")
@dataclass(frozen=True)
class Deposited:
    amount: int


@dataclass(frozen=True)
class Noted:
    text: str


def run(coro):
    return asyncio.run(coro)


def test_append_and_read(store):
    async def main():
        async with store:
            assert await store.version("acc") == 0
            assert await store.append("acc", [Deposited(1), Deposited(2)], expected_version=0) == 2
            assert await store.append("acc", [Deposited(3)], expected_version=2, metadata={"user": "ann"}) == 3
            assert await store.append("other", [Noted("hi")], expected_version=None) == 1
            assert await store.append("acc", [], expected_version=3) == 3  # nothing: only the check
            records = [r async for r in store.read("acc")]
            assert [r.event for r in records] == [Deposited(1), Deposited(2), Deposited(3)]
            assert [r.version for r in records] == [1, 2, 3]
            assert [r.metadata for r in records] == [{}, {}, {"user": "ann"}]
            assert {r.stream for r in records} == {"acc"}
            assert [r.type for r in records] == ["es_test.store.Deposited"] * 3
            assert len({r.id for r in records}) == 3
            first = records[0]
            assert isinstance(first, RecordedEvent)
            assert isinstance(first.recorded_at, datetime) and first.recorded_at.tzinfo is not None
            assert abs((datetime.now(timezone.utc) - first.recorded_at).total_seconds()) < 300
            assert [r.event async for r in store.read("acc", after=2)] == [Deposited(3)]
            assert [r async for r in store.read("nothing")] == []
            log = [r async for r in store.read_all()]
            assert [r.position for r in log] == [1, 2, 3, 4]
            assert [r.stream for r in log] == ["acc", "acc", "acc", "other"]
            assert [r.position async for r in store.read_all(after=1, limit=2)] == [2, 3]
            assert [r.position async for r in store.read_all(after=4)] == []
            assert await store.version("acc") == 3

    run(main())


def test_reads_page_through_batches(store):
    async def main():
        async with store:
            store.batch_size = 7
            await store.append("s", [Deposited(i) for i in range(30)], expected_version=0)
            await store.append("t", [Deposited(i) for i in range(5)], expected_version=0)
            assert [r.event.amount async for r in store.read("s")] == list(range(30))
            assert [r.position async for r in store.read_all()] == list(range(1, 36))
            assert [r.position async for r in store.read_all(after=3, limit=15)] == list(range(4, 19))

    run(main())


def test_wrong_expected_version_raises_and_writes_nothing(store):
    async def main():
        async with store:
            await store.append("acc", [Deposited(1)], expected_version=0)
            with pytest.raises(ConcurrencyError) as info:
                await store.append("acc", [Deposited(2), Deposited(3)], expected_version=0)
            assert (info.value.stream, info.value.expected, info.value.actual) == ("acc", 0, 1)
            with pytest.raises(ConcurrencyError) as info:
                await store.append("new", [Deposited(2)], expected_version=3)
            assert (info.value.expected, info.value.actual) == (3, 0)
            assert isinstance(info.value, EventStoreError)
            assert [r.event async for r in store.read_all()] == [Deposited(1)]
            assert await store.version("new") == 0

    run(main())


@pytest.mark.parametrize("writers", [8])
def test_concurrent_appends_at_one_version_exactly_one_wins(store, writers):
    async def main():
        async with store:
            await store.append("acc", [Deposited(0)], expected_version=0)
            for round in range(3):
                version = await store.version("acc")
                results = await asyncio.gather(
                    *(store.append("acc", [Deposited(i), Deposited(i)], expected_version=version) for i in range(writers)),
                    return_exceptions=True,
                )
                wins = [r for r in results if not isinstance(r, BaseException)]
                losses = [r for r in results if isinstance(r, ConcurrencyError)]
                assert wins == [version + 2] and len(losses) == writers - 1, results
                assert all(loss.actual >= version for loss in losses)
            records = [r async for r in store.read("acc")]
            assert [r.version for r in records] == list(range(1, 8))  # contiguous

    run(main())


def test_bad_arguments_are_clear_errors(store):
    async def main():
        async with store:
            with pytest.raises(TypeError, match="stream name"):
                await store.append("", [Deposited(1)], expected_version=0)
            with pytest.raises(TypeError, match="expected_version"):
                await store.append("s", [Deposited(1)], expected_version=-1)
            with pytest.raises(TypeError, match="expected_version"):
                await store.append("s", [Deposited(1)])  # type: ignore[call-arg]
            with pytest.raises(TypeError, match="metadata"):
                await store.append("s", [Deposited(1)], expected_version=0, metadata=["x"])  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="metadata"):
                await store.append("s", [Deposited(1)], expected_version=0, metadata={"when": object()})
            with pytest.raises(TypeError, match="iterable of event objects"):
                await store.append("s", Deposited(1), expected_version=0)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="after"):
                [r async for r in store.read_all(after=-1)]
            assert await store.version("s") == 0

    run(main())


def test_an_event_the_codec_cannot_encode_is_a_clear_error(store):
    class Plain:
        pass

    async def main():
        async with store:
            with pytest.raises(EncodeError, match="Plain"):
                await store.append("s", [Deposited(1), Plain()], expected_version=0)
            assert await store.version("s") == 0

    run(main())


def test_a_stored_type_the_codec_does_not_know_is_a_clear_error(store):
    @dataclass(frozen=True)
    class Forgotten:
        value: int

    async def main():
        async with store:
            from mediator.codec import Codec

            await store.append("s", [Deposited(1), Forgotten(2)], expected_version=0)
            type_string = store.codec.type_of(Forgotten)
            store.codec = Codec([Deposited])  # a process that no longer has the class
            with pytest.raises(UnknownTypeError) as info:
                [r async for r in store.read("s")]
            assert info.value.type_name == type_string and type_string in str(info.value)
            with pytest.raises(UnknownTypeError, match="Forgotten"):
                [r async for r in store.read_all()]

    run(main())


def test_subscribe_gives_old_then_live_events_and_ends_on_close(store):
    async def main():
        await store.open()
        await store.append("a", [Deposited(1), Deposited(2)], expected_version=0)
        seen = []

        async def follow():
            async for record in store.subscribe(after=1):
                seen.append(record.position)

        task = asyncio.ensure_future(follow())
        await asyncio.sleep(0)
        await store.append("b", [Deposited(3)], expected_version=0)
        for _ in range(200):
            if seen == [2, 3]:
                break
            await asyncio.sleep(0.01)
        assert seen == [2, 3]
        await store.append("a", [Deposited(4)], expected_version=2)
        for _ in range(200):
            if len(seen) == 3:
                break
            await asyncio.sleep(0.01)
        await store.close()
        await asyncio.wait_for(task, 10)  # ends cleanly
        assert seen == [2, 3, 4]

    run(main())


def test_a_subscriber_cancelled_as_a_commit_wakes_it_stops(store):
    """The cancellation and the wake-up come in the same loop step (asyncio.wait_for
    up to 3.11 swallowed such a cancellation, and the loop went on)."""

    async def main():
        async with store:
            async def follow():
                async for _ in store.subscribe():
                    pass

            for _ in range(3):
                task = asyncio.ensure_future(follow())
                for _ in range(3):
                    await asyncio.sleep(0)  # now waiting for a commit
                await store.append("a", [Deposited(1)], expected_version=None)  # wakes it
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, 5)

    run(main())


def test_a_closed_store_refuses_calls(store):
    async def main():
        async with store:
            await store.append("a", [Deposited(1)], expected_version=0)
        assert store.closed
        with pytest.raises(StoreClosedError):
            await store.append("a", [Deposited(2)], expected_version=1)
        with pytest.raises(StoreClosedError):
            await store.version("a")

    run(main())


def test_a_transaction_commits_all_or_nothing(store):
    async def main():
        async with store:
            with pytest.raises(RuntimeError, match="boom"):
                async with store.transaction() as tx:
                    await tx.append("a", store._encode([Deposited(1)], None), 0)
                    await tx.set_checkpoint("c", 1)
                    await tx.put("ns", "k", {"v": 1})
                    raise RuntimeError("boom")
            assert await store.version("a") == 0
            assert await store.checkpoint("c") == 0
            async with store.transaction() as tx:
                assert await tx.get("ns", "k") is None
                await tx.append("a", store._encode([Deposited(1)], None), 0)
                with pytest.raises(ConcurrencyError):
                    await tx.append("b", store._encode([Deposited(1)], None), 5)
                await tx.set_checkpoint("c", 1)
                await tx.put("ns", "k", {"v": [1, 2]})
                await tx.put("ns", "j", "x")
                assert await tx.get("ns", "k") == {"v": [1, 2]}
            assert await store.version("a") == 1 and await store.version("b") == 0
            assert await store.checkpoint("c") == 1
            async with store.transaction() as tx:
                assert await tx.items("ns") == [("j", "x"), ("k", {"v": [1, 2]})]
                await tx.delete("ns", "j")
                with pytest.raises(TypeError, match="not JSON"):
                    await tx.put("ns", "bad", object())
            async with store.transaction() as tx:
                assert await tx.items("ns") == [("k", {"v": [1, 2]})]
                assert await tx.get("ns", "j", "gone") == "gone"

    run(main())


def test_a_cancelled_transaction_leaves_nothing_and_the_store_usable(store):
    async def main():
        async with store:
            started = asyncio.Event()

            async def writer():
                async with store.transaction() as tx:
                    await tx.append("a", store._encode([Deposited(1)], None), 0)
                    started.set()
                    await asyncio.sleep(60)

            task = asyncio.ensure_future(writer())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await store.version("a") == 0
            assert await store.append("a", [Deposited(2)], expected_version=0) == 1

    run(main())


def test_a_write_inside_the_tasks_own_transaction_is_a_clear_error_not_a_deadlock(store):
    async def main():
        async with store:
            go = asyncio.Event()

            async def later():  # a task of its own: waits for its turn
                await go.wait()
                return await store.append("b", [Deposited(2)], expected_version=0)

            other = asyncio.ensure_future(later())
            async with store.transaction() as tx:
                with pytest.raises(EventStoreError, match="inside one of its own transactions"):
                    await asyncio.wait_for(store.append("a", [Deposited(1)], expected_version=0), 5)

                async def nested():
                    async with store.transaction():
                        pass

                with pytest.raises(EventStoreError, match="inside one of its own transactions"):
                    await asyncio.wait_for(nested(), 5)
                go.set()
                await asyncio.sleep(0.01)
                await tx.append("a", store._encode([Deposited(1)], None), 0)
                if type(store).__name__ != "PostgresEventStore":
                    # one writer at a time: the other task waits for this transaction
                    # (PostgreSQL takes its head row at the transaction's first append, so
                    # an append to another stream just before it may commit first)
                    assert not other.done()
            assert await asyncio.wait_for(other, 10) == 1
            assert (await store.version("a"), await store.version("b")) == (1, 1)

    run(main())


def test_a_projection_handler_saving_through_a_repository_is_a_clear_error(store):
    from mediator.event import LocalEventBus
    from mediator.eventsourcing import Subscription

    async def main():
        async with store:
            await store.append("a", [Deposited(1)], expected_version=0)
            bus = LocalEventBus()

            async def saga(event: Deposited) -> None:  # writes outside the subscription's transaction
                await asyncio.sleep(0)
                await store.append("b", [Deposited(event.amount)], expected_version=None)

            bus.register(saga)
            with pytest.raises(Exception) as info:
                await asyncio.wait_for(Subscription(store, bus, name="saga").catch_up(), 10)
            errors = getattr(info.value, "exceptions", (info.value,))
            assert any(isinstance(e, EventStoreError) and "own transactions" in str(e) for e in errors), errors
            assert await store.version("b") == 0 and await store.checkpoint("saga") == 0

    run(main())


def test_open_store_urls(tmp_path):
    from mediator.eventsourcing.memory import MemoryEventStore
    from mediator.eventsourcing.sqlite import SQLiteEventStore

    assert isinstance(open_store("memory://"), MemoryEventStore)
    relative = open_store("sqlite:///relative/events.db")
    assert isinstance(relative, SQLiteEventStore) and relative.path == "relative/events.db"
    absolute = open_store(f"sqlite:///{tmp_path}/events.db")  # sqlite:////tmp/...: four slashes
    assert absolute.path == f"{tmp_path}/events.db" and absolute.path.startswith("/")
    assert open_store("sqlite:///:memory:").path == ":memory:"
    assert isinstance(absolute, EventStore)
    with pytest.raises(ValueError, match="unknown store URL scheme 'mysql'"):
        open_store("mysql://localhost/db")
    with pytest.raises(ValueError, match="not a store URL"):
        open_store("events.db")
    with pytest.raises(ValueError, match="names no file"):
        open_store("sqlite:///")
    with pytest.raises(TypeError, match="must be a str"):
        open_store(None)  # type: ignore[arg-type]


def test_the_sqlite_schema_is_created_on_first_use_and_reopens(tmp_path):
    url = f"sqlite:///{tmp_path}/deep.db"

    async def main():
        async with open_store(url) as store:
            await store.append("a", [Deposited(1)], expected_version=0)
        async with open_store(url) as store:  # the schema is there: created once
            assert [r.event async for r in store.read("a")] == [Deposited(1)]
            assert await store.append("a", [Deposited(2)], expected_version=1) == 2

    run(main())
    assert (tmp_path / "deep.db").exists()


def test_a_sqlite_store_opened_under_one_event_loop_works_under_the_next(tmp_path):
    """Successive ``asyncio.run`` calls share one SQLite store: its threads answer the loop
    that asks, not the one the store was opened in."""
    store = open_store(f"sqlite:///{tmp_path}/loops.db")

    async def first():
        return await store.append("loops-1", [Deposited(1)], expected_version=0)

    async def second():
        version = await store.append("loops-1", [Deposited(2)], expected_version=1)
        events = [e.event.amount async for e in store.read("loops-1")]
        await store.close()
        return version, events

    assert run(first()) == 1
    assert run(second()) == (2, [1, 2])
