"""An advanced event example: a shop reacting to orders.

It shows:

- an ``EventHandlerRegistry`` built apart from the bus, then ``bus.include(registry)``;
- extra argument injection: ``bus.publish(event, customer=...)``;
- an ``EventAggregate``: ``use(bus)``, ``enqueue`` events, then ``commit`` them together;
- a custom ``EventPublisher`` whose ``transaction()`` holds events back until it closes;
- background mode (the default), and how to wait for the handlers deterministically;
- a failing handler in sync mode: every handler still runs, then an ``ExceptionGroup``.

Run it: ``pytest example/test_event_advanced.py``.
"""

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Dict, List

import pytest

from mediator.event import (
    ConfigEventAggregateError,
    EventAggregate,
    EventHandlerRegistry,
    EventPublish,
    EventPublisher,
    LocalEventBus,
)

# `ExceptionGroup` is builtin from Python 3.11; below, it comes from the `exceptiongroup`
# backport (a dependency of mediator there). `except* SomeError:` is 3.11+ syntax too:
# to run on 3.9, catch the group and pick errors with `group.subgroup(SomeError)`.
try:
    ExceptionGroup
except NameError:  # Python < 3.11
    from exceptiongroup import ExceptionGroup

# -- events and the shop they act on ------------------------------------------


@dataclass
class OrderPlaced:
    order_id: int
    item: str
    quantity: int


@dataclass
class OrderShipped:
    order_id: int


class OutOfStock(Exception):
    pass


@dataclass
class Shop:
    stock: Dict[str, int] = field(default_factory=lambda: {"widget": 10})
    journal: List[str] = field(default_factory=list)  # what the handlers did, in order


def build_handlers(shop: Shop) -> EventHandlerRegistry:
    """The shop's event handlers, collected in a registry that any bus can include."""
    handlers = EventHandlerRegistry()

    @handlers.register
    async def reserve_stock(event: OrderPlaced):
        shop.stock[event.item] -= event.quantity
        shop.journal.append(f"stock: {event.item} -{event.quantity}")

    # `customer` is injected: bus.publish(event, customer=...) or aggregate.enqueue(event, customer=...)
    @handlers.register
    async def confirm_order(event: OrderPlaced, customer: str):
        shop.journal.append(f"mail to {customer}: order #{event.order_id} confirmed")

    @handlers.register
    async def notify_shipping(event: OrderShipped, customer: str):
        shop.journal.append(f"mail to {customer}: order #{event.order_id} shipped")

    return handlers


def build_bus(shop: Shop) -> LocalEventBus:
    # sync_mode=True: publish returns once all handlers have finished.
    bus = LocalEventBus(sync_mode=True)
    bus.include(build_handlers(shop))
    return bus


def test_registry_and_injection():
    """Handlers of OrderPlaced run in registration order; `customer` is injected."""
    shop = Shop()
    bus = build_bus(shop)
    asyncio.run(bus.publish(OrderPlaced(order_id=1, item="widget", quantity=3), customer="ann"))
    assert shop.stock == {"widget": 7}
    assert shop.journal == ["stock: widget -3", "mail to ann: order #1 confirmed"]


# -- an aggregate stages events; commit publishes them -------------------------


class Order(EventAggregate):
    """A domain object that records what happened to it as events."""

    def __init__(self, order_id: int, customer: str) -> None:
        super().__init__()
        self.order_id = order_id
        self.customer = customer

    def place(self, item: str, quantity: int) -> None:
        self.enqueue(OrderPlaced(self.order_id, item, quantity), customer=self.customer)

    def ship(self) -> None:
        self.enqueue(OrderShipped(self.order_id), customer=self.customer)


def test_aggregate_commit():
    """Nothing is published until commit(); then the staged events go out in order, once."""
    shop = Shop()
    order = Order(order_id=2, customer="bob").use(build_bus(shop))
    order.place("widget", 1)
    order.ship()
    assert shop.journal == []

    asyncio.run(order.commit())
    assert shop.journal == [
        "stock: widget -1",
        "mail to bob: order #2 confirmed",
        "mail to bob: order #2 shipped",
    ]
    asyncio.run(order.commit())  # the stage is empty now: nothing more happens
    assert len(shop.journal) == 3


def test_aggregate_needs_a_publisher():
    order = Order(order_id=3, customer="cy")
    order.place("widget", 1)
    with pytest.raises(ConfigEventAggregateError, match="use"):
        asyncio.run(order.commit())


# -- a custom publisher transaction --------------------------------------------


class Outbox(EventPublish):
    """Where a transaction's events wait."""

    def __init__(self) -> None:
        self.events: list = []

    async def publish(self, obj, **kwargs):
        self.events.append((obj, kwargs))


class OutboxPublisher(EventPublisher):
    """Publishes a transaction's events to the bus only once the transaction closes.

    If the transaction body raises, the events are dropped (``yield`` raises, the
    loop below never runs): an all-or-nothing commit.
    """

    def __init__(self, bus: LocalEventBus, journal: List[str]) -> None:
        self.bus = bus
        self.journal = journal

    async def publish(self, obj, **kwargs):
        await self.bus.publish(obj, **kwargs)

    @asynccontextmanager
    async def transaction(self):
        outbox = Outbox()
        self.journal.append("transaction begins")
        yield outbox
        self.journal.append(f"transaction closes with {len(outbox.events)} event(s)")
        for obj, kwargs in outbox.events:
            await self.bus.publish(obj, **kwargs)


def test_custom_transaction():
    """EventAggregate.commit publishes inside publisher.transaction()."""
    shop = Shop()
    order = Order(order_id=4, customer="dee").use(OutboxPublisher(build_bus(shop), shop.journal))
    order.place("widget", 2)
    order.ship()
    asyncio.run(order.commit())
    assert shop.journal == [
        "transaction begins",
        "transaction closes with 2 event(s)",
        "stock: widget -2",
        "mail to dee: order #4 confirmed",
        "mail to dee: order #4 shipped",
    ]


# -- background mode -----------------------------------------------------------


def test_background_mode():
    """By default publish only starts the handlers: wait for them with an asyncio.Event."""
    journal = []

    async def main():
        done = asyncio.Event()  # create it inside the running loop (Python 3.9)
        bus = LocalEventBus()  # sync_mode=False: each handler runs as an asyncio task

        @bus.register
        async def first(event: OrderShipped):
            journal.append("first handler")

        @bus.register
        async def last(event: OrderShipped):
            journal.append("last handler")
            done.set()  # the last handler tells the waiting code it is over

        await bus.publish(OrderShipped(order_id=5))
        journal.append("publish returned")
        await asyncio.wait_for(done.wait(), timeout=10)  # the timeout only guards against a hang

    asyncio.run(main())
    assert journal == ["publish returned", "first handler", "last handler"]


# -- a failing handler in sync mode --------------------------------------------


def build_failing_bus(journal: List[str]) -> LocalEventBus:
    bus = LocalEventBus(sync_mode=True)

    @bus.register
    async def check_stock(event: OrderPlaced):
        raise OutOfStock(f"no {event.item} left")

    @bus.register
    async def audit(event: OrderPlaced):
        journal.append(f"audit: order #{event.order_id}")

    return bus


def test_failing_handler_raises_exception_group():
    """The other handlers still run; then publish raises an ExceptionGroup of the failures."""
    journal = []
    bus = build_failing_bus(journal)

    async def place_order():
        try:
            await bus.publish(OrderPlaced(order_id=6, item="gadget", quantity=1))
        except ExceptionGroup as group:  # on 3.11+ you could write `except* OutOfStock`
            return group.subgroup(OutOfStock)
        return None

    group = asyncio.run(place_order())
    assert journal == ["audit: order #6"]
    [error] = group.exceptions
    assert isinstance(error, OutOfStock) and str(error) == "no gadget left"
    # Each failure carries a note naming the handler and the event it failed on.
    [note] = error.__notes__
    assert "check_stock" in note and "OrderPlaced(order_id=6" in note
