"""Checked by mypy and pyright (``make test-typing``), never run: mediator.eventsourcing's static types."""

from dataclasses import dataclass
from typing import List

from typing_extensions import assert_type

from mediator import LocalEventBus
from mediator.eventsourcing import (
    Aggregate,
    ConcurrencyError,
    EventStore,
    RecordedEvent,
    Repository,
    Subscription,
    Transaction,
    applies,
    open_store,
)


@dataclass(frozen=True)
class Deposited:
    amount: int


class Account(Aggregate):
    balance = 0

    @applies
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount


async def store_and_repository() -> None:
    store = open_store("sqlite:///bank.db")
    assert_type(store, EventStore)
    async with store as opened:
        assert_type(opened, EventStore)
        assert_type(await store.append("s", [Deposited(1)], expected_version=0, metadata={"a": 1}), int)
        records: List[RecordedEvent] = [r async for r in store.read("s", after=0)]
        assert_type(records[0].position, int)
        async for record in store.read_all(after=0, limit=10):
            assert_type(record, RecordedEvent)
        async with store.transaction() as tx:
            assert_type(tx, Transaction)
            await tx.put("ns", "k", {"v": 1})
        accounts = Repository(store, bus=LocalEventBus(), snapshot_every=100)
        account = await accounts.get(Account, "id", version=3)
        assert_type(account, Account)  # get returns the class it was given
        assert_type(account.balance, int)
        await accounts.save(account, Account(id="other"), metadata={"by": "me"})
        assert_type(await Subscription(store, LocalEventBus(), name="p").catch_up(), int)
    try:
        pass
    except ConcurrencyError as error:
        assert_type(error.actual, int)
