"""Checked by mypy (``make test-typing``), never run: the public API's static types."""

from typing import Any

from typing_extensions import assert_type

from mediator import Hook, LocalEventBus, LocalRequestBus, Request, Stream
from mediator.common.factory import CallableHandlerPolicy, MethodHandlerPolicy
from mediator.event import EventAggregate


class Ping:
    pass


class Order(EventAggregate):
    order_id = 1


request_bus = LocalRequestBus(modifiers=[Hook(before=lambda subject, inject: None)])
event_bus = LocalEventBus(policies=[CallableHandlerPolicy(arg_map={"user": "current_user"})], sync_mode=True)


async def handle(ping: Ping) -> str:
    return "pong"


# register returns what it registered, directly or as a decorator
async def registered_functions_keep_their_types() -> None:
    assert_type(await request_bus.register(handle)(Ping()), str)
    decorate = request_bus.register(policies=[MethodHandlerPolicy("handle")])
    assert_type(await decorate(handle)(Ping()), str)

# use() keeps the aggregate's own class
order = Order().use(event_bus)
assert_type(order, Order)
assert_type(order.order_id, int)


# -- typed results: Request[T] types execute() and stream(); plain objects stay Any --------


class User:
    name = "ann"


class GetUser(Request[User]):
    pass


class ListUsers(Request[User]):
    pass


class Untyped:
    pass


async def typed_results(bus: LocalRequestBus) -> None:
    assert_type(await bus.execute(GetUser()), User)
    assert_type(await bus.execute(GetUser(), user="someone"), User)
    assert_type(await bus.execute(Untyped()), Any)
    async for user in bus.stream(ListUsers()):
        assert_type(user, User)
    assert_type(bus.stream(Untyped()), Stream[Any])
