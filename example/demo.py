"""mediator demo: a tiny order service.

    python example/demo.py

A ``PlaceOrder`` command goes through the request bus to its handler, which records an
``OrderPlaced`` event on an ``Order`` aggregate and commits it; the event bus then runs
the event handlers: one updates the stock, one emails the customer.
"""

import asyncio
import itertools
from dataclasses import dataclass

import mediator
from mediator.event import EventAggregate, LocalEventBus
from mediator.request import LocalRequestBus

# -- messages ------------------------------------------------------------------


@dataclass
class Customer:
    name: str
    email: str


@dataclass
class PlaceOrder:  # a command: asks for something to happen
    item: str
    quantity: int


@dataclass
class OrderPlaced:  # an event: says that it happened
    order_id: int
    item: str
    quantity: int


class OutOfStock(Exception):
    pass


class Order(EventAggregate):
    """An order records its events; ``commit()`` publishes them."""

    def __init__(self, order_id: int, customer: Customer, item: str, quantity: int) -> None:
        super().__init__()
        self.id = order_id
        self.enqueue(OrderPlaced(order_id, item, quantity), customer=customer)


# -- wiring --------------------------------------------------------------------

stock = {"rubber duck": 3, "teapot": 1}
order_ids = itertools.count(1)


def log_request(subject, inject):
    """A Hook stage: runs before every command handler."""
    print(f"> {subject} from {inject['customer'].name}")


commands = LocalRequestBus(modifiers=[mediator.Hook(before=log_request)])
events = LocalEventBus(sync_mode=True)  # sync: publish waits for the handlers (deterministic output)


@commands.register
async def place_order(command: PlaceOrder, customer: Customer) -> int:
    # `customer` is injected: commands.execute(command, customer=...)
    if stock.get(command.item, 0) < command.quantity:
        raise OutOfStock(f"only {stock.get(command.item, 0)} {command.item}(s) left")
    order = Order(next(order_ids), customer, command.item, command.quantity).use(events)
    print(f"  order #{order.id} placed")
    await order.commit()  # publishes OrderPlaced to the event bus
    return order.id


@events.register
async def update_stock(event: OrderPlaced):
    before = stock[event.item]
    stock[event.item] -= event.quantity
    print(f"  stock of {event.item}: {before} -> {stock[event.item]}")


@events.register
async def send_confirmation(event: OrderPlaced, customer: Customer):
    print(f"  email to {customer.email}: order #{event.order_id} ({event.quantity} x {event.item}) confirmed")


# -- the scenario --------------------------------------------------------------


async def main() -> None:
    ann = Customer("Ann", "ann@example.com")
    for command in [PlaceOrder("rubber duck", 2), PlaceOrder("teapot", 1), PlaceOrder("rubber duck", 2)]:
        try:
            order_id = await commands.execute(command, customer=ann)
            print(f"< order #{order_id} done")
        except OutOfStock as error:
            print(f"< refused: {error}")
    print(f"stock left: {stock}")
    print(f"engine: {'compiled' if mediator.COMPILED else 'pure Python'} (mediator.COMPILED = {mediator.COMPILED})")


if __name__ == "__main__":
    asyncio.run(main())
