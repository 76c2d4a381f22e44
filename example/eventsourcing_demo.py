"""mediator event-sourcing demo: bank accounts on SQLite, no server.

    python example/eventsourcing_demo.py [sqlite:///bank.db]

``Account`` aggregates record events; a ``Repository`` saves them to an SQLite event store
in one transaction and then publishes them on the event bus (the store is the outbox);
a ``Subscription`` projects the log into a balances read model, exactly once in effect.
Without an argument the store is a new file in a temporary directory.
"""

import asyncio
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mediator.codec import event_type
from mediator.event import LocalEventBus
from mediator.eventsourcing import Aggregate, ConcurrencyError, Repository, Subscription, applies, open_store

# -- events: stored by a stable name, so the classes can be renamed or moved --------


@event_type("bank.Opened")
@dataclass(frozen=True)
class Opened:
    owner: str


@event_type("bank.Deposited")
@dataclass(frozen=True)
class Deposited:
    amount: int


@event_type("bank.Withdrawn")
@dataclass(frozen=True)
class Withdrawn:
    amount: int


class InsufficientFunds(Exception):
    pass


# -- the aggregate: decides, records, applies --------------------------------------


class Account(Aggregate):
    @classmethod
    def open(cls, owner: str, id: str) -> "Account":
        account = cls(id=id)
        account.record(Opened(owner))
        return account

    def deposit(self, amount: int) -> None:
        if amount <= 0:
            raise ValueError("a deposit must be positive")
        self.record(Deposited(amount))

    def withdraw(self, amount: int) -> None:
        if amount > self.balance:
            raise InsufficientFunds(f"{self.owner} has {self.balance}, cannot withdraw {amount}")
        self.record(Withdrawn(amount))

    @applies
    def _opened(self, event: Opened) -> None:
        self.owner, self.balance = event.owner, 0

    @applies
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount

    @applies
    def _withdrawn(self, event: Withdrawn) -> None:
        self.balance -= event.amount


# -- the bus: what happens after a commit --------------------------------------------

notifications = LocalEventBus(sync_mode=True)


@notifications.register
async def notify(event: Deposited) -> None:
    print(f"  bus: deposited {event.amount}")


# -- a projection: balances, written in the subscription's own transaction -------------

projections = LocalEventBus()


@projections.register
async def project_opened(event: Opened, transaction, recorded) -> None:
    await transaction.put("balances", recorded.stream, {"owner": event.owner, "balance": 0})


@projections.register
async def project_deposited(event: Deposited, transaction, recorded) -> None:
    row = await transaction.get("balances", recorded.stream)
    await transaction.put("balances", recorded.stream, {**row, "balance": row["balance"] + event.amount})


@projections.register
async def project_withdrawn(event: Withdrawn, transaction, recorded) -> None:
    row = await transaction.get("balances", recorded.stream)
    await transaction.put("balances", recorded.stream, {**row, "balance": row["balance"] - event.amount})


# -- the scenario ----------------------------------------------------------------------


async def scenario(url: str) -> None:
    async with open_store(url) as store:
        accounts = Repository(store, bus=notifications, snapshot_every=5)

        ann = Account.open("Ann", id="ann")
        ann.deposit(10)
        ann.deposit(25)
        bob = Account.open("Bob", id="bob")
        bob.deposit(5)
        print("> save Ann and Bob (one transaction)")
        await accounts.save(ann, bob)

        print("> two clerks load Ann's account and both withdraw 30")
        first, second = await accounts.get(Account, "ann"), await accounts.get(Account, "ann")
        first.withdraw(30)
        second.withdraw(30)
        await accounts.save(first)
        try:
            await accounts.save(second)
        except ConcurrencyError as error:
            print(f"< the second save is refused: {error}")
        retry = await accounts.get(Account, "ann")
        try:
            retry.withdraw(30)
        except InsufficientFunds as error:
            print(f"< after reloading: {error}")

        past = await accounts.get(Account, "ann", version=2)
        print(f"Ann's balance after her first deposit: {past.balance}")

        print("> the balances projection catches up")
        handled = await Subscription(store, projections, name="balances").catch_up()
        async with store.transaction() as tx:
            balances = await tx.items("balances")
        print(f"  {handled} events -> {dict(balances)}")
        print(f"log: {[(r.position, r.stream, r.type) async for r in store.read_all()]}")

    async with open_store(url) as store:  # a new process would see the same
        ann = await Repository(store).get(Account, "ann")
        print(f"reopened: Ann has {ann.balance} at version {ann.version}")


def main() -> None:
    if len(sys.argv) > 1:
        asyncio.run(scenario(sys.argv[1]))
        return
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bank.db"
        print(f"store: sqlite:///{path}")
        asyncio.run(scenario(f"sqlite:///{path}"))


if __name__ == "__main__":
    main()
