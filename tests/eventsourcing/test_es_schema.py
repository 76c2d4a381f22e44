"""Schema evolution on every backend (guarantee 7): a renamed class and an upcast older
form still load; a stored type the codec does not know is a clear error, never a skip.

A "later version of the program" is a fresh ``Codec`` with the new classes, given to
the store as its codec (what a new process importing the new code has).
"""

import asyncio
from dataclasses import dataclass

import pytest

from mediator.codec import Codec, event_type
from mediator.eventsourcing import Aggregate, Repository, UnknownTypeError, applies


def run(coro):
    return asyncio.run(coro)


# the program as it was (its classes known to its own codec only: the two programs never
# run in one process, and the default codec would refuse two classes under one name)


@dataclass(frozen=True)
class MoneyIn:  # stored under its default name, module.qualname
    amount: int


@event_type("es_test.schema.Deposited")
@dataclass(frozen=True)
class DepositedV1:
    amount: int


@dataclass(frozen=True)
class Closed:  # removed from the program since, and no class took its name
    reason: str


async def write_as_before(store, *events) -> None:
    current = store.codec
    store.codec = Codec([MoneyIn, DepositedV1, Closed])
    try:
        await store.append("acc", events, expected_version=0)
    finally:
        store.codec = current


# the program as it is now: MoneyIn renamed and moved, Deposited at version 2


@event_type("es_test.schema.Credited", aliases=(f"{MoneyIn.__module__}.MoneyIn",))
@dataclass(frozen=True)
class Credited:
    amount: int


@event_type("es_test.schema.Deposited", version=2)
@dataclass(frozen=True)
class Deposited:
    cents: int
    currency: str


def later_codec() -> Codec:
    codec = Codec([Credited, Deposited])

    @codec.upcaster("es_test.schema.Deposited", from_version=1)
    def to_cents(data: dict) -> dict:
        return {"cents": data["amount"] * 100, "currency": "EUR"}

    return codec


class Account(Aggregate):
    @applies
    def _credited(self, event: Credited) -> None:
        self.cents = getattr(self, "cents", 0) + event.amount * 100

    @applies
    def _deposited(self, event: Deposited) -> None:
        self.cents = getattr(self, "cents", 0) + event.cents


def test_renamed_and_upcast_events_still_load(store):
    async def main():
        async with store:
            await write_as_before(store, MoneyIn(1), DepositedV1(2))
            store.codec = later_codec()  # the next version of the program
            records = [r async for r in store.read("acc")]
            assert [r.event for r in records] == [Credited(1), Deposited(200, "EUR")]
            assert records[1].type == "es_test.schema.Deposited"  # as stored: version 1
            account = await Repository(store).get(Account, "acc")
            assert (account.version, account.cents) == (2, 300)
            account.record(Deposited(5, "EUR"))
            await Repository(store).save(account)
            assert [r.type async for r in store.read("acc", after=2)] == ["es_test.schema.Deposited@2"]
            assert (await Repository(store).get(Account, "acc")).cents == 305

    run(main())


def test_a_stored_type_nobody_knows_is_an_error_naming_it(store):
    async def main():
        async with store:
            await write_as_before(store, DepositedV1(2), Closed("done"))
            store.codec = later_codec()
            missing = f"{Closed.__module__}.Closed"
            with pytest.raises(UnknownTypeError) as info:
                await Repository(store).get(Account, "acc")
            assert info.value.type_name == missing and repr(missing) in str(info.value)
            with pytest.raises(UnknownTypeError, match="Closed"):
                [r async for r in store.read_all()]
            seen = []
            with pytest.raises(UnknownTypeError, match="Closed"):
                async for record in store.subscribe():
                    seen.append(record.event)
            assert seen == [Deposited(200, "EUR")]  # the one before it; nothing skipped past it

    run(main())
