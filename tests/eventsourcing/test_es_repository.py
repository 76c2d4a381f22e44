"""Repository on every backend: get/save, failed saves, snapshots (guarantee 6)."""

import asyncio
from dataclasses import dataclass
from typing import List

import pytest

from mediator.codec import event_type
from mediator.eventsourcing import (
    Aggregate,
    AggregateNotFoundError,
    ConcurrencyError,
    EncodeError,
    Repository,
    applies,
)


@event_type("es_test.repo.Opened")
@dataclass(frozen=True)
class Opened:
    owner: str


@event_type("es_test.repo.Deposited")
@dataclass(frozen=True)
class Deposited:
    amount: int


@event_type("es_test.repo.Tagged")
@dataclass(frozen=True)
class Tagged:
    tag: str


class Account(Aggregate):
    applied = 0  # how many events appliers ran, over all instances

    @classmethod
    def open(cls, owner: str, id: str = None) -> "Account":  # type: ignore[assignment]
        account = cls(id=id)
        account.record(Opened(owner))
        return account

    def deposit(self, amount: int) -> None:
        if amount <= 0:
            raise ValueError("a deposit must be positive")
        self.record(Deposited(amount))

    @applies
    def _opened(self, event: Opened) -> None:
        type(self).applied += 1
        self.owner, self.balance, self.history = event.owner, 0, []

    @applies
    def _deposited(self, event: Deposited) -> None:
        type(self).applied += 1
        self.balance += event.amount
        self.history.append(event.amount)


def run(coro):
    return asyncio.run(coro)


def state(account: Account):
    return (account.id, account.version, account.owner, account.balance, account.history)


def test_save_then_get(store):
    async def main():
        async with store:
            accounts = Repository(store)
            account = Account.open("Ann")
            account.deposit(10)
            await accounts.save(account, metadata={"by": "test"})
            assert account.pending == [] and account.version == 2
            same = await accounts.get(Account, account.id)
            assert state(same) == state(account) and same.pending == []
            same.deposit(5)
            await accounts.save(same)
            again = await accounts.get(Account, account.id)
            assert (again.version, again.balance) == (3, 15)
            assert [r.metadata async for r in store.read(account.id)] == [{"by": "test"}] * 2 + [{}]
            past = await accounts.get(Account, account.id, version=2)
            assert (past.version, past.balance) == (2, 10)
            await accounts.save(again)  # nothing pending: nothing to do
            assert await store.version(account.id) == 3

    run(main())


def test_get_of_a_missing_aggregate_or_version(store):
    async def main():
        async with store:
            accounts = Repository(store)
            with pytest.raises(AggregateNotFoundError, match="no Account with id 'nope'"):
                await accounts.get(Account, "nope")
            account = Account.open("Ann", id="acc")
            await accounts.save(account)
            with pytest.raises(AggregateNotFoundError, match="has 1 events, not 4"):
                await accounts.get(Account, "acc", version=4)
            with pytest.raises(ValueError, match="version"):
                await accounts.get(Account, "acc", version=0)
            with pytest.raises(TypeError, match="Aggregate subclass"):
                await accounts.get(object, "acc")  # type: ignore[type-var]

    run(main())


def test_a_conflicting_save_saves_nothing_and_leaves_the_aggregates_as_they_were(store):
    async def main():
        async with store:
            accounts = Repository(store)
            first, second = Account.open("Ann", id="a"), Account.open("Bo", id="b")
            await accounts.save(first, second)
            mine, theirs = await accounts.get(Account, "b"), await accounts.get(Account, "b")
            theirs.deposit(1)
            await accounts.save(theirs)
            first.deposit(7)
            mine.deposit(2)
            with pytest.raises(ConcurrencyError) as info:
                await accounts.save(first, mine)  # one transaction: a's events are not saved either
            assert (info.value.stream, info.value.expected, info.value.actual) == ("b", 1, 2)
            assert await store.version("a") == 1
            assert (first.version, first.pending, first.balance) == (2, [Deposited(7)], 7)
            assert (mine.version, mine.pending) == (2, [Deposited(2)])
            await accounts.save(first)  # retried alone, it goes through
            assert await store.version("a") == 2 and first.pending == []

    run(main())


def test_a_save_that_cannot_encode_saves_nothing(store):
    class Plain:
        pass

    class Loose(Aggregate):
        @applies
        def _plain(self, event: Plain) -> None:
            pass

        @applies
        def _opened(self, event: Opened) -> None:
            pass

    async def main():
        async with store:
            loose = Loose(id="l")
            loose.record(Opened("x"))
            loose.record(Plain())
            with pytest.raises(EncodeError, match="Plain"):
                await Repository(store).save(loose)
            assert len(loose.pending) == 2 and await store.version("l") == 0

    run(main())


def test_save_arguments(store):
    async def main():
        async with store:
            accounts = Repository(store)
            account = Account.open("Ann")
            with pytest.raises(ValueError, match="twice"):
                await accounts.save(account, account)
            with pytest.raises(TypeError, match="takes Aggregates"):
                await accounts.save("x")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="metadata"):
                await accounts.save(account, metadata="x")  # type: ignore[arg-type]
            assert len(account.pending) == 1
        with pytest.raises(ValueError, match="snapshot_every"):
            Repository(store, snapshot_every=0)
        with pytest.raises(TypeError, match="EventStore"):
            Repository("sqlite:///x.db")  # type: ignore[arg-type]

    run(main())


# -- 6. snapshots ------------------------------------------------------------------------


def test_snapshots_give_what_a_full_replay_gives(store):
    async def main():
        async with store:
            snapshots = Repository(store, snapshot_every=4)
            replay = Repository(store)
            account = Account.open("Ann", id="acc")
            for amount in range(1, 11):  # saves at versions 4, 7, 10, 11: snapshots at 4 and 10
                account.deposit(amount)
                if amount % 3 == 0 or amount == 10:
                    await snapshots.save(account)
            assert account.version == 11
            snapshot = await store._load_snapshot("acc")
            assert snapshot is not None and snapshot.version == 10
            Account.applied = 0
            loaded = await snapshots.get(Account, "acc")
            assert Account.applied == 1  # the snapshot at 10, then event 11
            assert state(loaded) == state(await replay.get(Account, "acc")) == state(account)
            for version in range(1, 12):  # past states: older than the snapshot, or after it
                assert state(await snapshots.get(Account, "acc", version=version)) == state(
                    await replay.get(Account, "acc", version=version)
                )
            loaded.deposit(100)
            await snapshots.save(loaded)  # 12: a new snapshot
            assert (await store._load_snapshot("acc")).version == 12
            Account.applied = 0
            await snapshots.get(Account, "acc")
            assert Account.applied == 0
            assert state(await snapshots.get(Account, "acc")) == state(await replay.get(Account, "acc"))

    run(main())


def test_a_changed_snapshot_form_is_ignored(store):
    async def main():
        async with store:
            account = Account.open("Ann", id="acc")
            account.deposit(1)
            await Repository(store, snapshot_every=2).save(account)
            assert (await store._load_snapshot("acc")).version == 2

            class Account2(Account):  # another class (and form): it must not take Account's snapshot
                snapshot_version = 2

            Account.applied = 0
            assert (await Repository(store, snapshot_every=2).get(Account2, "acc")).balance == 1
            assert Account2.applied == 2  # replayed from its events

    run(main())


def test_state_json_cannot_keep_is_a_clear_error_before_saving(store):
    class Tags(Aggregate):
        @applies
        def _tagged(self, event: Tagged) -> None:
            self.tags = getattr(self, "tags", set()) | {event.tag}

    class JsonTags(Tags):
        def snapshot_state(self):
            return {"tags": sorted(self.tags)}

        def restore_state(self, state):
            self.tags = set(state["tags"])

    async def main():
        async with store:
            tags = Tags(id="t")
            tags.record(Tagged("a"))
            with pytest.raises(TypeError, match=r"cannot snapshot .*Tags 't': its state is not JSON.*snapshot_state"):
                await Repository(store, snapshot_every=1).save(tags)
            assert await store.version("t") == 0 and len(tags.pending) == 1
            good = JsonTags(id="j")
            good.record(Tagged("a"))
            good.record(Tagged("b"))
            repo = Repository(store, snapshot_every=1)
            await repo.save(good)
            assert (await repo.get(JsonTags, "j")).tags == {"a", "b"}

    run(main())


def test_several_repositories_share_one_store(store):
    async def main():
        async with store:
            one, two = Repository(store), Repository(store, snapshot_every=1)
            accounts: List[Account] = [Account.open(f"o{i}", id=f"a{i}") for i in range(5)]
            await one.save(*accounts)
            for account in accounts:
                account.deposit(3)
            await two.save(*accounts)
            assert [(await one.get(Account, f"a{i}")).balance for i in range(5)] == [3] * 5

    run(main())
