"""A child process of the event-store tests: ``python es_child.py MODE URL [ARGS...]``.

Each mode does one thing to the store at URL with the public API and reports on stdout
(one line per step, flushed), so the parent can wait for a step and then kill it.
"""

import asyncio
import os
import signal
import sys
from dataclasses import dataclass

from mediator.codec import event_type
from mediator.event import LocalEventBus
from mediator.eventsourcing import Aggregate, ConcurrencyError, Repository, Subscription, applies, open_store


@event_type("es_test.child.Deposited")
@dataclass(frozen=True)
class Deposited:
    amount: int


@event_type("es_test.child.Opened")
@dataclass(frozen=True)
class Opened:
    owner: str


class Account(Aggregate):
    @applies
    def _opened(self, event: Opened) -> None:
        self.owner, self.balance = event.owner, 0

    @applies
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount


def say(*parts: object) -> None:
    print(*parts, flush=True)


async def race(url: str, stream: str, version: str, go_file: str) -> None:
    """Wait for go_file, then append at the given version: prints won/lost."""
    async with open_store(url) as store:
        await store.version(stream)  # connected, schema there
        say("ready")
        while not os.path.exists(go_file):
            await asyncio.sleep(0.001)
        try:
            new = await store.append(stream, [Deposited(1), Deposited(2)], expected_version=int(version))
            say("won", new)
        except ConcurrencyError as error:
            say("lost", error.actual)


async def write(url: str, name: str, count: str) -> None:
    """Append count events, one per transaction, to the stream name."""
    async with open_store(url) as store:
        for i in range(int(count)):
            await store.append(name, [Deposited(i)], expected_version=i)
        say("done")


async def save_then_hang(url: str, account_id: str) -> None:
    """Save an account with a bus whose handler never returns: killed after the commit,
    before the publish ends (the events stay in the outbox)."""
    bus = LocalEventBus(sync_mode=True)

    async def hang(event: Deposited) -> None:
        say("publishing", event.amount)
        await asyncio.sleep(3600)

    bus.register(hang)
    async with open_store(url) as store:
        account = Account(id=account_id)
        account.record(Opened("Ann"))
        account.record(Deposited(10))
        account.record(Deposited(20))
        await Repository(store, bus=bus).save(account)


async def append_big(url: str, count: str) -> None:
    """One append of count events (killed while it runs)."""
    async with open_store(url) as store:
        events = [Deposited(i) for i in range(int(count))]
        say("appending")
        await store.append("big", events, expected_version=None)
        say("appended")


async def save_many(url: str, count: str, prefix: str) -> None:
    """One Repository.save of count aggregates of 20 events each (killed while it runs)."""
    async with open_store(url) as store:
        accounts = []
        for i in range(int(count)):
            account = Account(id=f"{prefix}-{i}")
            account.record(Opened(f"o{i}"))
            for amount in range(19):
                account.record(Deposited(amount))
            accounts.append(account)
        say("saving")
        await Repository(store).save(*accounts)
        say("saved")


async def save_half(url: str) -> None:
    """A transaction that wrote one aggregate's events and waits before the second's."""
    async with open_store(url) as store:
        first, second = Account(id="first"), Account(id="second")
        first.record(Opened("A"))
        second.record(Opened("B"))
        async with store.transaction() as tx:
            await tx.append(first.id, store._encode(first.pending, None), 0)
            say("half")
            await asyncio.sleep(3600)
            await tx.append(second.id, store._encode(second.pending, None), 0)


async def project(url: str, die_at: str, log_path: str, name: str = "totals", batch: str = "7") -> None:
    """Run the projection ``name``: a transactional handler sums into the read model
    (namespace ``name``), a plain one appends positions to a file; SIGKILL itself inside
    the handler of the event at position die_at (after its transactional write), or
    catch up to the end if die_at is 0."""
    bus = LocalEventBus()
    die = int(die_at)

    async def count(event: Deposited, transaction, recorded) -> None:
        total = await transaction.get(name, "sum", 0)
        await transaction.put(name, "sum", total + event.amount)
        await transaction.put(name + ".applied", str(recorded.position), 1)
        if recorded.position == die:
            os.kill(os.getpid(), signal.SIGKILL)

    async def log(event: Deposited, recorded) -> None:
        with open(log_path, "a") as file:
            file.write(f"{recorded.position}\n")

    bus.register(count)
    bus.register(log)
    async with open_store(url) as store:
        say("projecting")
        handled = await Subscription(store, bus, name=name, batch_size=int(batch)).catch_up()
        say("caught up", handled)


def main() -> None:
    mode, url, *args = sys.argv[1:]
    modes = {
        "race": race,
        "write": write,
        "save_then_hang": save_then_hang,
        "append_big": append_big,
        "save_half": save_half,
        "save_many": save_many,
        "project": project,
    }
    asyncio.run(modes[mode](url, *args))


if __name__ == "__main__":
    main()
