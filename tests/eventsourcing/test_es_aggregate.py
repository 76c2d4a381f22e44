"""Aggregate and @applies: the applier table, inheritance, errors, codec registration."""

from dataclasses import dataclass

import pytest

from mediator.codec import Codec, codec
from mediator.eventsourcing import Aggregate, NoApplierError, applies


@dataclass(frozen=True)
class Opened:
    owner: str


@dataclass(frozen=True)
class Deposited:
    amount: int


@dataclass(frozen=True)
class Withdrawn:
    amount: int


@dataclass(frozen=True)
class Unapplied:
    note: str


class Account(Aggregate):
    @classmethod
    def open(cls, owner: str) -> "Account":
        account = cls()
        account.record(Opened(owner))
        return account

    def deposit(self, amount: int) -> None:
        self.record(Deposited(amount))

    @applies
    def _opened(self, event: Opened) -> None:
        self.owner, self.balance = event.owner, 0

    @applies
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount


def test_record_applies_and_stages():
    account = Account.open("Ann")
    account.deposit(10)
    account.deposit(5)
    assert (account.owner, account.balance, account.version) == ("Ann", 15, 3)
    assert account.pending == [Opened("Ann"), Deposited(10), Deposited(5)]
    assert isinstance(account.id, str) and len(account.id) == 36


def test_given_id_and_bad_id():
    assert Account(id="acc-1").id == "acc-1"
    with pytest.raises(TypeError, match="non-empty str"):
        Account(id="")
    with pytest.raises(TypeError, match="non-empty str"):
        Account(id=7)  # type: ignore[arg-type]


def test_an_event_with_no_applier_names_both_classes():
    account = Account.open("Ann")
    with pytest.raises(NoApplierError) as info:
        account.record(Unapplied("x"))
    message = str(info.value)
    assert "Account" in message and "Unapplied" in message
    assert account.version == 1 and account.pending == [Opened("Ann")]  # nothing staged
    assert isinstance(info.value, TypeError)


def test_the_table_is_by_exact_type():
    @dataclass(frozen=True)
    class BigDeposit(Deposited):
        pass

    with pytest.raises(NoApplierError, match="BigDeposit"):
        Account.open("Ann").record(BigDeposit(100))


def test_subclasses_inherit_and_override():
    class Savings(Account):
        @applies
        def _deposited(self, event: Deposited) -> None:  # overrides by name
            self.balance += 2 * event.amount

        @applies
        def _withdrawn(self, event: Withdrawn) -> None:  # adds one
            self.balance -= event.amount

    class Checking(Account):
        @applies
        def _other_deposit(self, event: Deposited) -> None:  # overrides by event class
            self.balance += 3 * event.amount

    savings = Savings.open("Bo")
    savings.deposit(10)
    savings.record(Withdrawn(1))
    assert savings.balance == 19
    checking = Checking.open("Cy")
    checking.deposit(10)
    assert checking.balance == 30
    account = Account.open("Di")
    account.deposit(10)
    assert account.balance == 10  # the base is untouched
    with pytest.raises(NoApplierError):
        account.record(Withdrawn(1))
    assert set(Savings.event_classes()) == {Opened, Deposited, Withdrawn}


def test_a_subclass_can_drop_an_applier_by_redefining_the_name():
    class Frozen(Account):
        def _deposited(self, event: Deposited) -> None:  # no longer an applier
            raise AssertionError("not called")

    with pytest.raises(NoApplierError, match="Deposited"):
        Frozen.open("Ed").deposit(1)


def test_bad_appliers_are_clear_errors_at_class_creation():
    with pytest.raises(TypeError, match=r"_missing.*annotate"):

        class NoAnnotation(Aggregate):
            @applies
            def _missing(self, event) -> None:  # type: ignore[no-untyped-def]
                pass

    with pytest.raises(TypeError, match=r"_two.*exactly \(self, event\)"):

        class TwoEvents(Aggregate):
            @applies
            def _two(self, a: Opened, b: Deposited) -> None:
                pass

    with pytest.raises(TypeError, match=r"_generic.*must be a class"):

        class NotAClass(Aggregate):
            @applies
            def _generic(self, event: "list[int]") -> None:
                pass

    with pytest.raises(TypeError, match=r"_unknown.*cannot resolve"):

        class Unresolvable(Aggregate):
            @applies
            def _unknown(self, event: "NoSuchEvent") -> None:  # type: ignore[name-defined]  # noqa: F821
                pass


def test_applied_classes_are_registered_with_the_codec():
    @dataclass(frozen=True)
    class Renamed:
        value: int

    type_string = f"{Renamed.__module__}.{Renamed.__qualname__}"
    assert not codec.knows(type_string)

    class Holder(Aggregate):
        @applies
        def _renamed(self, event: Renamed) -> None:
            self.value = event.value

    assert codec.knows(type_string)
    assert codec.decode(type_string, b'{"value": 3}') == Renamed(3)
    other = Codec()
    Holder._register_events(other)
    assert other.knows(type_string)


def test_rebuilding_does_not_call_init():
    class Counted(Account):
        inits = 0

        def __init__(self, **kwargs: object) -> None:
            type(self).inits += 1
            super().__init__(**kwargs)  # type: ignore[arg-type]

    blank = Counted._blank("x")
    blank._replay([Opened("Ann"), Deposited(4)])
    assert (blank.id, blank.version, blank.balance, blank.pending, Counted.inits) == ("x", 2, 4, [], 0)
