"""What only the PostgreSQL backend has: its commit-order mechanism under writers on
separate connections (as separate processes have), LISTEN/NOTIFY wake-ups and the poll
that covers for a lost listener, concurrent schema creation, its driver connection in a
transaction. (Every contract test runs on PostgreSQL too: see ``conftest.py``.)"""

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

import pytest


@dataclass(frozen=True)
class Tick:
    writer: int
    n: int


@pytest.fixture
def pg_url(request: Any, tmp_path: Path) -> str:
    from pg_backend import postgres_url  # type: ignore[import-not-found]

    return postgres_url(request, tmp_path)


def open_pg(url: str, **options: Any) -> Any:
    from mediator.codec import Codec
    from mediator.eventsourcing import open_store

    codec = Codec()
    codec.register(Tick)
    return open_store(url, codec=codec, **options)


class Tail:
    """A subscriber's positions, collected until it has seen the log's last position."""

    def __init__(self, store: Any) -> None:
        self.store, self.seen, self.last = store, [], None  # type: ignore[var-annotated]
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for event in self.store.subscribe():
            self.seen.append(event)
            if self.last is not None and event.position >= self.last:
                return

    async def until_end(self) -> List[Any]:
        """After the writers are done: wait until the subscriber reached the log's end."""
        self.last = [event.position async for event in self.store.read_all()][-1]
        if self.seen and self.seen[-1].position >= self.last:
            self.task.cancel()
        else:
            await asyncio.wait_for(self.task, 60)
        return self.seen


def test_tailing_subscriber_misses_nothing_under_8_writers_on_their_own_stores(pg_url: str) -> None:
    """8 writers, each with a store (pool) of its own, commit concurrently, one and several
    events per transaction; a subscriber on another store sees every event once, in
    position order, positions dense. A sequence-numbered log fails this (it skips events
    whose transaction commits after a later position's)."""
    writers, per_writer = 8, 60

    async def main() -> None:
        reader = open_pg(pg_url, poll_interval=0.01)
        stores = [open_pg(pg_url, pool_size=2) for _ in range(writers)]
        async with reader:
            for store in stores:
                await store.open()
            async def write(w: int) -> None:
                version = 0
                for n in range(per_writer):
                    batch = [Tick(w, n)] if n % 3 else [Tick(w, n), Tick(w, n)]
                    version = await stores[w].append(f"w{w}", batch, expected_version=version)

            expected = writers * sum(2 if n % 3 == 0 else 1 for n in range(per_writer))
            tail = Tail(reader)
            await asyncio.gather(*(write(w) for w in range(writers)))
            seen = await tail.until_end()
            for store in stores:
                await store.close()
            assert [event.position for event in seen] == list(range(1, expected + 1))
            by_writer: dict = {}
            for event in seen:
                by_writer.setdefault(event.stream, []).append(event.version)
            assert all(versions == list(range(1, len(versions) + 1)) for versions in by_writer.values())

    asyncio.run(main())


def test_transaction_appends_on_separate_stores_never_skip(pg_url: str) -> None:
    """The same through ``store.transaction()`` (multi-statement transactions that hold
    the head row from their first append to their commit), two streams per transaction."""
    writers, per_writer = 8, 25

    async def main() -> None:
        reader = open_pg(pg_url, poll_interval=0.01)
        stores = [open_pg(pg_url, pool_size=1) for _ in range(writers)]
        async with reader:
            expected = writers * per_writer * 2
            async def write(w: int) -> None:
                store = stores[w]
                for n in range(per_writer):
                    async with store.transaction() as tx:
                        await tx.append(f"a{w}", store._encode([Tick(w, n)], None), n)
                        await asyncio.sleep(0)  # let the others queue on the head row
                        await tx.append(f"b{w}", store._encode([Tick(w, n)], None), n)

            tail = Tail(reader)
            await asyncio.gather(*(write(w) for w in range(writers)))
            seen = await tail.until_end()
            for store in stores:
                await store.close()
            assert [event.position for event in seen] == list(range(1, expected + 1))

    asyncio.run(main())


def test_notify_wakes_a_subscriber_of_another_store(pg_url: str) -> None:
    """A subscriber whose poll is an hour apart still gets another store's (process's)
    commit: LISTEN/NOTIFY wakes it."""

    async def main() -> None:
        async with open_pg(pg_url, poll_interval=3600) as reader, open_pg(pg_url) as writer:
            received: List[Any] = []

            async def tail() -> None:
                async for event in reader.subscribe():
                    received.append(event.event)
                    return

            tailer = asyncio.ensure_future(tail())
            await asyncio.sleep(0.2)  # the subscriber has read the (empty) log and waits
            await writer.append("s", [Tick(1, 1)], expected_version=0)
            await asyncio.wait_for(tailer, 30)
            assert received == [Tick(1, 1)]

    asyncio.run(main())


def test_poll_covers_for_a_lost_listener(pg_url: str) -> None:
    """With its LISTEN connection killed by the server, a subscriber still gets every
    event (the poll), none twice."""

    async def main() -> None:
        async with open_pg(pg_url, poll_interval=0.05) as reader, open_pg(pg_url) as writer:
            received: List[Any] = []

            async def tail() -> None:
                async for event in reader.subscribe():
                    received.append(event.event)
                    if len(received) == 5:
                        return

            tailer = asyncio.ensure_future(tail())
            for _ in range(500):  # the subscriber waits: its LISTEN connection is open
                if reader._listener is not None:
                    break
                await asyncio.sleep(0.01)
            pid = reader._listener.get_server_pid()
            async with writer.transaction() as tx:
                assert await tx.execute("SELECT pg_terminate_backend($1)", [pid]) == [(True,)]
            for n in range(5):
                await writer.append("s", [Tick(1, n)], expected_version=n)
                await asyncio.sleep(0.01)
            await asyncio.wait_for(tailer, 30)
            assert received == [Tick(1, n) for n in range(5)]

    asyncio.run(main())


def test_stores_opening_a_fresh_database_at_once_create_the_schema_once(pg_url: str) -> None:
    async def main() -> None:
        stores = [open_pg(pg_url) for _ in range(6)]
        await asyncio.gather(*(store.open() for store in stores))
        assert await stores[0].append("s", [Tick(0, 0)], expected_version=0) == 1
        assert [await store.version("s") for store in stores] == [1] * 6
        for store in stores:
            await store.close()

    asyncio.run(main())


def test_a_transaction_exposes_the_asyncpg_connection(pg_url: str) -> None:
    """A handler's SQL runs in the store's transaction: it commits with it, or not at all."""
    import asyncpg

    async def main() -> None:
        async with open_pg(pg_url) as store:
            async with store.transaction() as tx:
                assert isinstance(tx.connection, asyncpg.Connection)
                await tx.connection.execute("CREATE TABLE balances (id text PRIMARY KEY, amount int)")
                await tx.execute("INSERT INTO balances VALUES ($1, $2)", ["a", 1])
                await tx.set_checkpoint("balances", 1)
            with pytest.raises(RuntimeError):
                async with store.transaction() as tx:
                    await tx.execute("UPDATE balances SET amount = 99")
                    await tx.set_checkpoint("balances", 2)
                    raise RuntimeError("the handler failed")
            async with store.transaction() as tx:
                assert await tx.execute("SELECT id, amount FROM balances") == [("a", 1)]
                assert await tx.checkpoint("balances") == 1

    asyncio.run(main())


def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    from mediator.eventsourcing import EventStoreError

    async def main() -> None:
        store = open_pg("postgresql://someone:s3cret@127.0.0.1:1/nowhere", connect_timeout=5)
        with pytest.raises(EventStoreError) as caught:
            await store.open()
        message = str(caught.value)
        assert "cannot connect to PostgreSQL" in message and "127.0.0.1:1" in message
        assert "s3cret" not in message and "s3cret" not in repr(store)
        await store.close()

    asyncio.run(main())
