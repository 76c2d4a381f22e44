"""mediator.codec: stable type names, both JSON paths, upcasting, and every refusal."""

import dataclasses
import datetime
import decimal
import enum
import pickle
import uuid
from typing import Dict, List, Optional, Tuple

import pytest

import mediator.codec as codec_module
from mediator.codec import Codec, CodecError, DecodeError, EncodeError, UnknownTypeError, event_type

try:
    import msgspec
except ImportError:  # PyPy: msgspec does not build there; the stdlib path is what runs
    msgspec = None

try:
    import pydantic
except ImportError:
    pydantic = None


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Line:
    sku: str
    quantity: int
    price: decimal.Decimal


@dataclasses.dataclass(frozen=True)
class OrderPlaced:
    order_id: uuid.UUID
    at: datetime.datetime
    day: datetime.date
    lines: List[Line]
    tags: Tuple[str, ...]
    extra: Dict[str, int]
    note: Optional[str]
    colour: Colour
    blob: bytes
    ratio: float = 0.5


def sample() -> OrderPlaced:
    return OrderPlaced(
        order_id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        at=datetime.datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=datetime.timezone.utc),
        day=datetime.date(2026, 12, 5),
        lines=[Line("a", 2, decimal.Decimal("9.99")), Line("b", 1, decimal.Decimal("0.10"))],
        tags=("x", "y"),
        extra={"k": 1},
        note=None,
        colour=Colour.BLUE,
        blob=b"\x00\xffbytes",
    )


def stdlib_codec(monkeypatch: pytest.MonkeyPatch, *classes: type) -> Codec:
    """A codec on the standard-library path, as on PyPy."""
    monkeypatch.setattr(codec_module, "msgspec", None)
    return Codec(classes)


@pytest.fixture(params=["msgspec", "stdlib"])
def make_codec(request, monkeypatch):
    if request.param == "msgspec":
        if msgspec is None:
            pytest.skip("msgspec is not installed on this interpreter (PyPy)")
        return Codec
    monkeypatch.setattr(codec_module, "msgspec", None)
    return Codec


def test_a_dataclass_round_trips_under_its_default_name(make_codec):
    codec = make_codec([OrderPlaced])
    type_string, payload = codec.encode(sample())
    assert type_string == f"{__name__}.OrderPlaced"
    assert isinstance(payload, bytes)
    assert codec.decode(type_string, payload) == sample()
    assert codec.knows(type_string) and not codec.knows("nope.Nope")
    assert codec.class_of(type_string) is OrderPlaced


@pytest.mark.skipif(msgspec is None, reason="msgspec is not installed on this interpreter (PyPy)")
def test_both_json_paths_write_the_same_bytes_and_read_each_other(monkeypatch):
    fast = Codec([OrderPlaced])
    fast_type, fast_payload = fast.encode(sample())
    slow = stdlib_codec(monkeypatch, OrderPlaced)
    slow_type, slow_payload = slow.encode(sample())
    assert (fast_type, fast_payload) == (slow_type, slow_payload)
    assert slow.decode(fast_type, fast_payload) == sample()
    monkeypatch.undo()
    assert Codec([OrderPlaced]).decode(slow_type, slow_payload) == sample()


@pytest.mark.skipif(msgspec is None, reason="msgspec is not installed on this interpreter (PyPy)")
def test_a_msgspec_struct_round_trips():
    class Shipped(msgspec.Struct, frozen=True):
        order_id: int
        carrier: str

    codec = Codec([Shipped])
    assert codec.decode(*codec.encode(Shipped(7, "ups"))) == Shipped(7, "ups")


@pytest.mark.skipif(pydantic is None, reason="pydantic is not installed on this interpreter")
def test_a_pydantic_model_round_trips(make_codec):
    class Paid(pydantic.BaseModel):
        order_id: int
        amount: decimal.Decimal
        at: datetime.datetime

    event = Paid(order_id=7, amount=decimal.Decimal("1.50"), at=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
    codec = make_codec([Paid])
    assert codec.decode(*codec.encode(event)) == event


def test_an_event_type_name_survives_a_rename_and_aliases_read_old_names(make_codec):
    @event_type("bank.Opened", aliases=("legacy.AccountOpened",))
    @dataclasses.dataclass
    class AccountWasOpened:
        owner: str

    codec = make_codec([AccountWasOpened])
    type_string, payload = codec.encode(AccountWasOpened("ann"))
    assert type_string == "bank.Opened"
    assert codec.decode("legacy.AccountOpened", b'{"owner":"bob"}') == AccountWasOpened("bob")


def test_the_mark_is_not_inherited(make_codec):
    @event_type("bank.Base")
    @dataclasses.dataclass
    class Base:
        x: int

    @dataclasses.dataclass
    class Child(Base):
        y: int = 0

    codec = make_codec([Base, Child])
    assert codec.type_of(Base) == "bank.Base"
    assert codec.type_of(Child).endswith(".Child")


def test_upcasters_run_in_order_from_the_stored_version(make_codec):
    @event_type("bank.Deposited", version=3)
    @dataclasses.dataclass
    class Deposited:
        cents: int
        currency: str

    codec = make_codec([Deposited])

    @codec.upcaster("bank.Deposited", from_version=1)
    def amount_to_cents(data):
        return {"cents": data["amount"] * 100}

    @codec.upcaster("bank.Deposited", from_version=2)
    def add_currency(data):
        return {**data, "currency": "EUR"}

    assert codec.type_of(Deposited) == "bank.Deposited@3"
    assert codec.decode("bank.Deposited", b'{"amount": 2}') == Deposited(200, "EUR")
    assert codec.decode("bank.Deposited@2", b'{"cents": 5}') == Deposited(5, "EUR")
    assert codec.decode(*codec.encode(Deposited(1, "USD"))) == Deposited(1, "USD")


def test_a_gap_in_the_upcasters_or_a_newer_version_is_a_clear_error(make_codec):
    @event_type("bank.Moved", version=3)
    @dataclasses.dataclass
    class Moved:
        to: str

    codec = make_codec([Moved])
    codec.upcaster("bank.Moved", from_version=2)(lambda data: data)
    with pytest.raises(DecodeError, match=r"no upcaster of 'bank.Moved' from version 1") as info:
        codec.decode("bank.Moved", b'{"to": "x"}')
    assert info.value.type_name == "bank.Moved"
    with pytest.raises(DecodeError, match=r"stored at version 4.*at version 3"):
        codec.decode("bank.Moved@4", b'{"to": "x"}')
    codec.upcaster("bank.Moved", from_version=1)(lambda data: [data])
    with pytest.raises(DecodeError, match="returned list, not a dict"):
        codec.decode("bank.Moved", b'{"to": "x"}')


def test_an_unknown_type_is_an_error_naming_it(make_codec):
    codec = make_codec()
    with pytest.raises(UnknownTypeError, match=r"unknown event type 'shop.Refunded'") as info:
        codec.decode("shop.Refunded", b"{}")
    assert info.value.type_name == "shop.Refunded"
    assert isinstance(info.value, DecodeError) and isinstance(info.value, LookupError)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"not json", ""),
        (b'{"sku": "a", "quantity": "two", "price": "1"}', "quantity"),
        (b'{"sku": "a", "price": "1"}', "quantity"),
        (pickle.dumps(Line("a", 1, decimal.Decimal(1))), ""),
    ],
    ids=["not-json", "wrong-field-type", "missing-field", "a-pickle"],
)
def test_bytes_that_do_not_decode_are_an_error_naming_the_type(make_codec, payload, message):
    codec = make_codec([Line])
    type_string = codec.type_of(Line)
    with pytest.raises(DecodeError, match=rf"cannot decode '{type_string}' as .*Line.*{message}") as info:
        codec.decode(type_string, payload)
    assert info.value.type_name == type_string


def test_an_object_the_codec_cannot_store_is_an_encode_error_naming_its_class(make_codec):
    class Plain:
        pass

    @dataclasses.dataclass
    class HoldsASocket:
        thing: object

    codec = make_codec()
    with pytest.raises(EncodeError, match=r"Plain.*must be a dataclass, a msgspec.Struct or a pydantic model"):
        codec.encode(Plain())
    with pytest.raises(EncodeError, match=r"cannot encode .*HoldsASocket"):
        codec.encode(HoldsASocket(object()))
    with pytest.raises(CodecError, match="Plain"):
        codec.register(Plain)


def test_two_classes_claiming_one_name_are_refused_but_a_redefinition_replaces(make_codec):
    @event_type("shop.Thing")
    @dataclasses.dataclass
    class First:
        x: int

    @event_type("shop.Thing")
    @dataclasses.dataclass
    class Second:
        x: int

    codec = make_codec([First])
    with pytest.raises(CodecError, match=r"cannot register .*Second as 'shop.Thing': .*First has that name"):
        codec.register(Second)

    def define():
        @dataclasses.dataclass
        class Again:
            x: int

        return Again

    old, new = define(), define()
    codec.register_all([old, new])  # the same class defined again (a reload): the new one wins
    assert type(codec.decode(codec.type_of(new), b'{"x": 1}')) is new


@pytest.mark.parametrize(
    "bad, error",
    [
        (dict(name=""), ValueError),
        (dict(name="a@b"), ValueError),
        (dict(name="a", version=0), ValueError),
        (dict(name="a", version=True), ValueError),
        (dict(name="a", aliases=("b@2",)), ValueError),
    ],
)
def test_event_type_checks_its_arguments(bad, error):
    name = bad.pop("name")
    with pytest.raises(error, match="event_type"):
        event_type(name, **bad)


def test_the_default_codec_is_one_instance():
    assert isinstance(codec_module.codec, Codec)
    assert codec_module.codec is codec_module.codec


def test_decoding_a_type_seen_before_still_checks_and_follows_registration(make_codec):
    """The per-type-string decoder kept after a first decode (the load path's fast path)
    gives the same errors as the first decode and follows a re-registration."""
    codec = make_codec([Line])
    type_string = codec.type_of(Line)
    good = codec.encode(Line("a", 2, decimal.Decimal("1.5")))[1]
    assert codec.decode(type_string, good) == Line("a", 2, decimal.Decimal("1.5"))
    for payload in (b"not json", b'{"sku": "a", "price": "1"}'):
        with pytest.raises(DecodeError, match=rf"cannot decode '{type_string}' as .*Line") as info:
            codec.decode(type_string, payload)
        assert info.value.type_name == type_string
    assert codec.decode(type_string, memoryview(good)) == Line("a", 2, decimal.Decimal("1.5"))

    @dataclasses.dataclass(frozen=True)
    class Reloaded:  # the same class defined again (a module reload): the new one wins
        sku: str
        quantity: int
        price: decimal.Decimal

    Reloaded.__qualname__, Reloaded.__module__ = Line.__qualname__, Line.__module__
    codec.register(Reloaded)
    assert type(codec.decode(type_string, good)) is Reloaded
